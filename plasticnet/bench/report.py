"""The benchmark targets, judged on result rows, and the plain-text tables `plasticnet bench` prints."""

from collections.abc import Sequence

from plasticnet.bench.ops import FUSED_BACKENDS

CPU_MIN_SPEEDUP_VS_EAGER = 1.5
CPU_MIN_SPEEDUP_VS_COMPILE = 1.0
GPU_MIN_PCT_COPY = 85.0
PLASTIC_MAX_STEP_RATIO = 1.10

TARGETS = {
    "ops_cpu": f"fused backend, forward+backward: >= {CPU_MIN_SPEEDUP_VS_EAGER}x eager and "
    f">= {CPU_MIN_SPEEDUP_VS_COMPILE}x compile",
    "ops_gpu": f"fused backend: forward and forward+backward each >= {GPU_MIN_PCT_COPY:g}% of copy bandwidth",
    "train_step": f"plastic step time <= {PLASTIC_MAX_STEP_RATIO}x the static step in the same mode",
}


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def op_target(row: dict, device_type: str) -> str | None:
    """PASS/MISS for a fused backend's row; None for the baselines or without both baselines."""
    if row["backend"] not in FUSED_BACKENDS:
        return None
    if device_type == "cuda":
        return _verdict(min(row["pct_copy"], row["fwd_pct_copy"]) >= GPU_MIN_PCT_COPY)
    if row["speedup_vs_eager"] is None or row["speedup_vs_compile"] is None:
        return None
    return _verdict(
        row["speedup_vs_eager"] >= CPU_MIN_SPEEDUP_VS_EAGER and row["speedup_vs_compile"] >= CPU_MIN_SPEEDUP_VS_COMPILE
    )


def train_step_target(row: dict) -> str | None:
    if row["model"] != "plastic":
        return None
    return _verdict(1 / row["vs_static"] <= PLASTIC_MAX_STEP_RATIO)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, markdown: bool = False) -> str:
    """Right-aligned columns under a header and a rule: plain text, or a Markdown table."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _ms(row: dict, prefix: str) -> str:
    return f"{row[f'{prefix}_ms']:.3f} ({row[f'{prefix}_p20_ms']:.3f}-{row[f'{prefix}_p80_ms']:.3f})"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def op_table(rows: Sequence[dict], *, markdown: bool = False) -> str:
    headers = [
        "backend",
        "K",
        "shape",
        "dtype",
        "fwd ms (p20-p80)",
        "bwd ms (p20-p80)",
        "fwd+bwd ms (p20-p80)",
        "GB/s",
        "% copy",
        "vs eager",
        "vs compile",
        "target",
    ]
    return format_table(
        headers,
        [
            [
                r["backend"],
                str(r["K"]),
                "x".join(map(str, r["shape"])),
                r["dtype"],
                _ms(r, "fwd"),
                _ms(r, "bwd"),
                _ms(r, "fwd_bwd"),
                f"{r['gbps']:.1f}",
                f"{r['pct_copy']:.0f}%",
                _ratio(r["speedup_vs_eager"]),
                _ratio(r["speedup_vs_compile"]),
                r["target"] or "-",
            ]
            for r in rows
        ],
        markdown=markdown,
    )


def train_step_table(rows: Sequence[dict], *, markdown: bool = False) -> str:
    headers = ["model", "mode", "width", "batch", "backend", "step ms (p20-p80)", "images/s", "vs static", "target"]
    return format_table(
        headers,
        [
            [
                r["model"],
                r["mode"],
                str(r["base_width"]),
                str(r["batch"]),
                r["backend"],
                _ms(r, "step"),
                f"{r['images_per_s']:.1f}",
                _ratio(r["vs_static"]),
                r["target"] or "-",
            ]
            for r in rows
        ],
        markdown=markdown,
    )


def _us(row: dict, prefix: str) -> str:
    if f"{prefix}_us" not in row:
        return "-"
    return f"{row[f'{prefix}_us']:.1f} ({row[f'{prefix}_p20_us']:.1f}-{row[f'{prefix}_p80_us']:.1f})"


def overhead_table(rows: Sequence[dict], *, markdown: bool = False) -> str:
    headers = [
        "backend",
        "K",
        "no_grad fwd fused",
        "eager",
        "ratio",
        "fwd+bwd fused",
        "eager",
        "ratio",
        "engine floor",
        "floor/eager",
        "native 1-op",
        "native/eager",
        "target",
    ]
    return format_table(
        headers,
        [
            [
                r["backend"],
                str(r["K"]),
                _us(r, "no_grad_fwd_fused"),
                _us(r, "no_grad_fwd_eager"),
                _ratio(r["no_grad_fwd_ratio"]),
                _us(r, "fwd_bwd_fused"),
                _us(r, "fwd_bwd_eager"),
                _ratio(r["fwd_bwd_ratio"]),
                _us(r, "fwd_bwd_floor"),
                _ratio(r["fwd_bwd_floor_ratio"]),
                _us(r, "fwd_bwd_native"),
                _ratio(r.get("fwd_bwd_native_ratio")),
                r["target"],
            ]
            for r in rows
        ],
        markdown=markdown,
    )
