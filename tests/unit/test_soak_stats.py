"""The pure parts of the memory runs (benchmarks/processes.py, benchmarks/soak.py): growth
after warm-up, the per-minute table."""

from __future__ import annotations

from benchmarks.processes import core_use, growth_after_warmup
from benchmarks.soak import Record, per_minute, render_markdown


def samples(series: list[float]) -> list[dict]:
    return [{"t": 10.0 * i, "sent": 10 * i, "rss_mib": {"W": mib}} for i, mib in enumerate(series)]


def test_memory_that_comes_back_is_flat_and_memory_that_is_kept_grows() -> None:
    warm = lambda sample: sample["sent"] >= 30  # noqa: E731
    # Plateaus up and down within the envelope the warm-up reached: flat.
    flat = growth_after_warmup(samples([900, 1060, 1030, 1030, 1082, 1013, 1014]), warm)["W"]
    assert flat["warmup_peak_mib"] == 1060 and flat["peak_after_warmup_mib"] == 1082
    assert flat["final_mib"] == 1014 and flat["growth_pct"] == -4.3
    assert flat["peak_growth_pct"] == 2.1
    # A staircase that never comes back down: growth.
    kept = growth_after_warmup(samples([900, 1200, 1281, 1427, 1707, 2072, 2366]), warm)["W"]
    assert kept["growth_pct"] == kept["peak_growth_pct"] == 65.8  # 2366 over the warm-up's 1427
    assert growth_after_warmup(samples([900, 950]), warm) == {}  # never warmed up


def test_per_minute_counts_errors_and_p99_by_path() -> None:
    records = [Record("heatflow", 5.0 + i, 0.010, "200") for i in range(50)]  # minute 1
    records += [Record("face", 30.0, 0.900, "200"), Record("face", 70.0, 1.5, "503")]
    rows = per_minute(records, 2)
    assert [row["requests"] for row in rows] == [51, 1]
    assert [row["errors"] for row in rows] == [0, 1]
    assert rows[0]["paths"]["face"] == {"requests": 1, "errors": 0, "p99_ms": 900.0}
    assert rows[1]["paths"]["face"]["errors"] == 1
    result = {
        "minutes": 2,
        "load": 0.7,
        "requests": len(records),
        "errors": 1,
        "statuses": {"200": 51, "503": 1},
        "capacity": {"face": {"rps": 2.0}, "heatflow": {"rps": 100.0}},
        "rates_rps": {"face": 0.7, "heatflow": 35.0},
        "per_minute": rows,
        "warmup_s": 60.0,
        "rss_growth_after_warmup": {
            "FaceAnalyzer": {
                "warmup_peak_mib": 1000.0,
                "peak_after_warmup_mib": 1010.0,
                "final_mib": 990.0,
                "growth_pct": -1.0,
                "peak_growth_pct": 1.0,
            }
        },
    }
    table = render_markdown(result)
    assert (
        "| 2 | 1 | 1 | 1,500 |" in table
        and "| FaceAnalyzer | 1000 | 1010 | 990 | -1.0% | 1.0% |" in table
    )


def test_core_use_splits_the_server_cores_between_the_service_others_and_the_hypervisor() -> None:
    # Two cores, 10 s apart: the service used 6 s, the cores were busy 14 s, 2 s were stolen.
    samples = [
        {"t": 0.0, "served_cpu_s": 100.0, "busy_cpu_s": 500.0, "steal_cpu_s": 7.0},
        {"t": 5.0, "served_cpu_s": 103.0, "busy_cpu_s": 506.0, "steal_cpu_s": 8.0},
        {"t": 10.0, "served_cpu_s": 106.0, "busy_cpu_s": 514.0, "steal_cpu_s": 9.0},
    ]
    assert core_use(samples, 0.0, 10.0, cores=2) == {
        "served_pct": 30.0,
        "other_pct": 40.0,
        "steal_pct": 10.0,
    }
    # A window after the first sample starts from the last sample before it.
    assert core_use(samples, 7.0, 10.0, cores=1)["served_pct"] == 60.0
    assert core_use(samples[:1], 0.0, 10.0, cores=1) is None  # one reading: no interval
    assert core_use([{"t": 0.0}, {"t": 5.0}], 0.0, 10.0, cores=1) is None  # no counters


def test_per_minute_table_shows_the_server_cores() -> None:
    samples = [
        {"t": 0.0, "served_cpu_s": 0.0, "busy_cpu_s": 0.0, "steal_cpu_s": 0.0},
        {"t": 60.0, "served_cpu_s": 30.0, "busy_cpu_s": 54.0, "steal_cpu_s": 3.0},
    ]
    rows = per_minute([Record("heatflow", 1.0, 0.01, "200")], 2, samples, cores=1)
    assert rows[0]["server_cores"] == {"served_pct": 50.0, "other_pct": 40.0, "steal_pct": 5.0}
    assert rows[1]["server_cores"] is None  # no sample after the first minute
    result = {
        "minutes": 2,
        "load": 0.7,
        "requests": 1,
        "errors": 0,
        "statuses": {"200": 1},
        "capacity": {"heatflow": {"rps": 100.0}},
        "rates_rps": {"heatflow": 35.0},
        "per_minute": rows,
        "warmup_s": 60.0,
        "rss_growth_after_warmup": {},
    }
    table = render_markdown(result)
    assert "| service % | other % | stolen % |" in table
    assert "| 1 | 1 | 0 | 10 | 10 | 50 | 40 | 5 |" in table
    assert "| 2 | 0 | 0 | – | – | – | – | – |" in table
