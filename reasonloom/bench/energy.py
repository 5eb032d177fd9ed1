"""Energy counters: CPU package energy from Linux RAPL (powercap sysfs), GPU energy from NVML.
Where no counter exists the answer is None ("not available"), never a guess."""
from __future__ import annotations

from pathlib import Path


class RaplReader:
    """Sums the package domains under a powercap root (a parameter, so tests use a fake tree).

    Each `energy_uj` counter wraps at `max_energy_range_uj`; a reading lower than the last is
    a wrap, not a negative energy.
    """

    def __init__(self, root: str | Path = "/sys/class/powercap"):
        self.root = Path(root)
        self.domains = sorted(p for p in self.root.glob("intel-rapl:*")
                              if p.name.count(":") == 1 and (p / "energy_uj").exists())
        self._last: dict[Path, int] = {}
        self.joules = 0.0

    @property
    def available(self) -> bool:
        return bool(self.domains)

    def _read(self, domain: Path) -> int | None:
        try:
            return int((domain / "energy_uj").read_text().strip())
        except (OSError, ValueError):
            return None

    def sample(self) -> float:
        """Accumulate energy since the last sample; returns the total in joules."""
        for domain in self.domains:
            now = self._read(domain)
            if now is None:
                continue
            last = self._last.get(domain)
            if last is not None:
                delta = now - last
                if delta < 0:   # wrapped around
                    span = int((domain / "max_energy_range_uj").read_text().strip())
                    delta += span + 1
                self.joules += delta / 1e6
            self._last[domain] = now
        return self.joules


class NvmlReader:
    """Total GPU energy (mJ counters) over all GPUs, when NVML and a GPU are present."""

    def __init__(self) -> None:
        self.handles = []
        self._start: list[int] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                            for i in range(pynvml.nvmlDeviceGetCount())]
            self._start = [pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles]
        except Exception:
            self.handles = []

    @property
    def available(self) -> bool:
        return bool(self.handles)

    def joules(self) -> float:
        now = [self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles]
        return sum(n - s for n, s in zip(now, self._start)) / 1e3


class EnergyMeter:
    """CPU (RAPL) + GPU (NVML) joules over a span; `joules` is None where neither exists."""

    def __init__(self, powercap_root: str | Path = "/sys/class/powercap"):
        self.rapl = RaplReader(powercap_root)
        self.nvml = NvmlReader()

    @property
    def available(self) -> bool:
        return self.rapl.available or self.nvml.available

    def start(self) -> None:
        if self.rapl.available:
            self.rapl.sample()

    def sample(self) -> None:
        if self.rapl.available:
            self.rapl.sample()

    @property
    def joules(self) -> float | None:
        if not self.available:
            return None
        total = self.rapl.sample() if self.rapl.available else 0.0
        return total + (self.nvml.joules() if self.nvml.available else 0.0)
