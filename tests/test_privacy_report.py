"""The report of runs that measured privacy: leakage columns as mean ± std over seeds, privacy.png."""
from pathlib import Path

from edgesplit.report.build import find_runs, write_report
from tests.test_report import PNG_SIGNATURE, _run_dir, _summary, _table
from tests.test_report_seeds import MB, _comm

# (compressor, privacy) -> label leak AUC (norm) of seeds 0 and 1; inversion PSNR is 20 + 10 x that
LEAK = {("none", "measure"): [0.94, 0.96], ("quantize4", "measure"): [0.70, 0.80],
        ("none", "nopeek"): [0.60, 0.60]}


def test_leakage_columns_and_figure(tmp_path: Path) -> None:
    root, job = tmp_path / "sweep", 0
    for (comp, privacy), aucs in LEAK.items():
        for seed, auc in enumerate(aucs):
            summary = _summary(97.0, comm=_comm(4 * MB if comp == "none" else MB // 2))
            for epoch, h in enumerate(summary.history):  # the largest is the second epoch's
                h.privacy = {"label_auc_norm": auc - 0.1 * abs(1 - epoch), "inversion_psnr": 20 + 10 * auc}
            summary.record_epoch(summary.history.pop(), 128, summary.comm, summary.sides)  # type: ignore
            ov = [f"compressor={comp}", f"privacy={privacy}", f"seed={seed}"]
            _run_dir(root / f"{job}_{','.join(ov)}", ov, summary)
            job += 1
    text = write_report(find_runs([root]), root)
    table = _table(text, "## Privacy: what the cloud learned")
    assert table[0] == ["compressor", "privacy", "seeds", "best val acc1", "bytes/batch (up + down)",
                        "label leak AUC (norm)", "inversion PSNR (dB)"]
    assert table[1][:2] == ["none", "measure"] and table[1][3] == "97.00 ± 0.00 (n=2)"
    assert table[1][4] == "8 MB ± 0 B (n=2)"
    assert table[1][5:] == ["0.950 ± 0.014 (n=2)", "29.5 ± 0.1 (n=2)"]
    assert table[2][5] == "0.750 ± 0.071 (n=2)" and table[3][5] == "0.600 ± 0.000 (n=2)"
    assert (root / "privacy.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "![accuracy vs leakage](privacy.png)" in (root / "report.md").read_text()
