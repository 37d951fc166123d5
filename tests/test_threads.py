"""How many threads the kit gives torch: one library call, read from the CPU quota."""


def test_the_thread_budget_follows_the_cpu_quota(tmp_path, monkeypatch):
    """One place decides a notebook's threads: the container's quota (cgroup v2 and v1), JupyterHub's
    CPU_LIMIT, the CPU affinity, OMP_NUM_THREADS when given; the smallest wins."""
    import os

    from koch_explore.core.runtime import cpu_budget

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("CPU_LIMIT", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")  # 1.5 cores -> 2 threads
    assert cpu_budget(v2) == (2, "cgroup cpu.max")
    (v2 / "cpu.max").write_text("max 100000\n")  # no quota: the affinity
    assert cpu_budget(v2) == (16, "CPU affinity")
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_budget(tmp_path / "v1") == (1, "cgroup cpu.cfs_quota_us")
    monkeypatch.setenv("CPU_LIMIT", "0.5")
    assert cpu_budget(tmp_path / "none") == (1, "CPU_LIMIT")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_budget(v2) == (3, "OMP_NUM_THREADS")
