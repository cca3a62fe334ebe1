"""lm-evaluation-harness's own command line with the `compactlm` model registered.

    python -m compactlm.eval.lm_eval_cli --model compactlm --model_args pretrained=CHECKPOINT \\
        --tasks hellaswag,arc_easy --batch_size 16

takes exactly `lm_eval`'s arguments. lm-eval 0.4 finds models only in its own registry (it has no
plugin entry points), so plain `lm_eval --model compactlm` needs the registration hook that
`compactlm eval --install-lm-eval-plugin` installs (see compactlm.eval.lm_eval_hook).
"""

import compactlm.eval.harness  # noqa: F401  (registers the "compactlm" model)


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
