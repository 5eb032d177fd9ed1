"""A run's stored record (orchestrator/run_record.py) and node outputs, read back from its
files under $REASONLOOM_HOME/runs/."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from reasonloom.orchestrator.cache import RunStore, runs_dir
from reasonloom.orchestrator.run_files import RunFileError, check_run_id
from reasonloom.orchestrator.run_record import RECORD_KEY


class ReportError(ValueError):
    """One line: why there is no report to write."""


def run_files(run_id: str) -> list[Path]:
    """The run's own file, or one file per problem of a dataset run (RUN_ID.0, RUN_ID.1 ...)."""
    try:
        check_run_id(run_id)
    except RunFileError as exc:
        raise ReportError(str(exc).replace("--resume", "report")) from None
    folder = runs_dir()
    single = folder / f"{run_id}.sqlite"
    if single.exists():
        return [single]
    parts = [p for p in folder.glob(f"{run_id}.*.sqlite") if p.stem.split(".")[-1].isdigit()]
    if not parts:
        raise ReportError(f"no run {run_id!r} under {folder} (run ids are printed by "
                          f"`reasonloom run`)")
    return sorted(parts, key=lambda p: int(p.stem.split(".")[-1]))


def load_problem_run(path: Path) -> dict[str, Any]:
    """{record, outputs} of one problem's run file; a file from before run records were kept
    (or from a run still in progress) has outputs only."""
    try:
        store = RunStore(path, "read_write")
    except sqlite3.Error as exc:
        raise ReportError(f"{path}: not a run file ({exc})") from None
    try:
        record = store.get_meta(RECORD_KEY)
        outputs = store.node_outputs()
    except sqlite3.Error as exc:
        raise ReportError(f"{path}: corrupt run file ({exc})") from None
    finally:
        store.close()
    if record is None:
        raise ReportError(f"{path}: the run kept no record for a report (it is still running, "
                          f"was killed, or ran before `reasonloom report` existed)")
    return {"record": record, "outputs": outputs}
