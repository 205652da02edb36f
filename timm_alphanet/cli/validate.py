"""``alphanet-validate``: top-1/top-5/loss of a model on an image folder, with timm's or the paper's pipeline.

    alphanet-validate --model alphanet_a3 --data-dir /data/imagenet --split val --pipeline paper
    accelerate launch -m timm_alphanet.cli.validate --model hf-hub:me/alphanet_p03 --data-dir /data/imagenet
    alphanet-validate --model local-dir:out/alphanet_a0 --data-dir sklearn/digits --write-to out/alphanet_a0
"""
import argparse
import os
import sys
from typing import Optional, Sequence

from ..utils import check_model_spec
from ._common import HelpFormatter, int_at_least, user_errors_exit

__all__ = ['build_parser', 'main']

PROG = 'alphanet-validate'
# timm_alphanet.evaluation.PIPELINES, named here so the parser imports no torch (tests/test_cli_startup.py pins them)
PIPELINES = ('timm', 'paper')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=HelpFormatter,
        description='Validate a model (top-1, top-5, loss) on an image folder, on any number of Accelerate '
                    'processes; with --write-to, record the result in that model folder\'s config.json and card.')
    parser.add_argument('--model', required=True,
                        help='a registered name (its published weights), hf-hub:ORG/NAME, local-dir:FOLDER or FOLDER')
    parser.add_argument('--data-dir', required=True, help='image folder (DIR/<split>/<class>/...) or sklearn/digits')
    parser.add_argument('--split', default='validation', help='sub-folder of --data-dir to validate on')
    parser.add_argument('--pipeline', default='timm', choices=PIPELINES,
                        help="timm: the model's pretrained_cfg (resize, centre crop at its input size); paper: "
                             "resize 256 bicubic, centre crop 224, resize to the model's resolution")
    parser.add_argument('--dataset-name', default=None, help='name of the data in the record (default: the folder)')
    parser.add_argument('-b', '--batch-size', type=int_at_least(1), default=64, help='images per batch per process')
    parser.add_argument('-j', '--workers', type=int_at_least(0), default=min(4, os.cpu_count() or 1),
                        help='data loader processes')
    parser.add_argument('--write-to', default=None, metavar='FOLDER',
                        help="record the result in this model folder (it must hold the validated model's weights)")
    parser.add_argument('--kd-report', default=None, metavar='TEACHER',
                        help="also measure how the model's predictions depart from this teacher's on the same images "
                             '(a timm name with its weights, hf-hub:ORG/NAME or local-dir:FOLDER, loaded as train.py '
                             'loads --teacher): KL(p||q), D_-1(p||q), entropy gap, q-p on the teacher\'s top and '
                             'secondary classes, top-1 agreement where the teacher is unsure')
    parser.add_argument('--kd-report-json', default=None, metavar='FILE',
                        help='write the --kd-report figures to this JSON file')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def _model_spec(spec: str) -> str:
    if not spec.startswith(('hf-hub:', 'local-dir:')) and os.path.isdir(spec):
        return f'local-dir:{spec}'
    return spec


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``alphanet-validate``; exits with status 2 and a one-line message on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.kd_report_json is not None and args.kd_report is None:
        parser.error('--kd-report-json writes the report of --kd-report TEACHER; give both')

    def run() -> int:
        # torch, timm and the library only now: --help and flag errors are answered without them
        import timm
        import torch
        from accelerate import Accelerator

        from .. import models  # noqa: F401  (registers the alphanet_* models)
        from ..data import data_name, dataset_and_root, open_image_dataset
        from ..evaluation import validate_model
        from ..export.folder import record_evaluation

        if args.write_to is not None and not os.path.isfile(os.path.join(args.write_to, 'config.json')):
            raise FileNotFoundError(f'--write-to {args.write_to[:300]}: not a model folder (no config.json)')
        spec = _model_spec(args.model)
        if not timm.is_model(spec) and not spec.startswith(('hf-hub:', 'local-dir:')):
            raise ValueError(f'unknown model {spec[:100]!r}; give a registered name (e.g. alphanet_a0), '
                             'hf-hub:ORG/NAME, local-dir:FOLDER or a model folder')
        dataset = open_image_dataset(*dataset_and_root(args.data_dir), args.split, what='--data-dir')
        check_model_spec(spec)
        model = timm.create_model(spec, pretrained=True).eval()
        cpu = not torch.cuda.is_available()
        accelerator = Accelerator(cpu=cpu)
        teacher = None
        if args.kd_report is not None:  # built before validating, so a teacher that cannot load fails fast
            from ..task import AlphaDistillationTask
            teacher_spec = _model_spec(args.kd_report)
            check_model_spec(teacher_spec)
            # the trainer's own teacher loading: weights, class check, re-normalisation of the student's input
            teacher = AlphaDistillationTask(model, teacher_spec, device=accelerator.device, verbose=False)
        result = validate_model(accelerator, model, dataset, args.pipeline, args.batch_size, args.workers,
                                progress=not args.no_progress)
        result.update(dataset=args.dataset_name or data_name(args.data_dir), split=args.split)
        accelerator.print(f'{args.model}: top1 {result["top1"]:.3f} top5 {result["top5"]:.3f} loss '
                          f'{result["loss"]:.4f} ({result["num_images"]} images, {args.pipeline} pipeline, '
                          f'{accelerator.num_processes} process(es))')
        if args.write_to is not None and accelerator.is_main_process:
            record_evaluation(args.write_to, result, model=accelerator.unwrap_model(model))
            print(f'recorded in {args.write_to}/config.json and README.md')
        if teacher is not None:
            import json

            from ..evaluation import format_kd_report, kd_report_model
            from ..utils import write_atomic
            report = kd_report_model(accelerator, model, teacher.teacher_logits, dataset, args.pipeline,
                                     args.batch_size, args.workers, progress=not args.no_progress)
            report.update(model=args.model, teacher=args.kd_report, split=args.split,
                          dataset=args.dataset_name or data_name(args.data_dir))
            accelerator.print(f'{args.model} against teacher {args.kd_report}:\n' + format_kd_report(report))
            if args.kd_report_json is not None and accelerator.is_main_process:
                # NaN (e.g. agreement where the teacher is never unsure) is not JSON: written as null
                clean = {k: None if isinstance(v, float) and v != v else v for k, v in report.items()}
                write_atomic(args.kd_report_json, json.dumps(clean, indent=2) + '\n')
                print(f'kd report written to {args.kd_report_json}')
        return 0

    return user_errors_exit(PROG, run)


if __name__ == '__main__':
    sys.exit(main())
