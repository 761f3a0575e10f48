"""Every pattern of a task filled with every label word, for a human to read:

    python scripts/show_patterns.py eprstmt [--row 0]

Fields come from a training row of split 0 (the configuration's ``paths.fewclue_dir``), or appear as [field]
without data;
problems that tests/test_patterns_read.py rejects (doubled characters at the slot, empty words) are flagged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from datamodules.runs.saved_config import compose_train_config
from datamodules.tasks.rows import read_rows
from datamodules.tasks.task_configs import load_task_specs
from lightning_modules.scoring.patterns import (
    allowed_fields,
    doubles_at_slot,
    reading_problems,
    slot_neighbours,
)


def example_fields(task, row_index: int) -> dict[str, str]:
    """The fields of one training row as the datamodule reads them (cluewsc's spans and marked text, chid's left and
    right of the slot), each cut to 40 characters."""
    fields = {name: f"[{name}]" for name in allowed_fields(task)}
    fewclue_dir = compose_train_config([f"task={task.name}"]).paths.fewclue_dir  # FEWCLUE_DIR, or conf's default
    path = Path(fewclue_dir) / task.name / "train_0.json"
    if path.is_file():
        row = read_rows(task, path, labelled=True)[row_index]
        fields.update({name: str(row.fields[name])[:40] for name in fields if name in row.fields})
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("task")
    parser.add_argument("--row", type=int, default=0)
    args = parser.parse_args()
    (task,) = load_task_specs([args.task])
    fields = example_fields(task, args.row)
    for i, template in enumerate(task.patterns):
        before, after = slot_neighbours(template, allowed_fields(task))
        own = " (its own sets)" if i in task.pattern_verbalizers else ""
        print(f"pattern {i}{own}: {template}")
        for set_name, table in task.verbalizers_for(i).items():
            for label, words in table.items():
                for word in words:
                    filled = template.replace("{mask}", f"【{word}】").format(**fields)
                    flag = "  <- doubled at the slot" if doubles_at_slot(word, before, after) else ""
                    print(f"  {set_name} {label:>14}: {filled}{flag}")
    problems = reading_problems(task)
    print(f"{len(problems)} problem(s)")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
