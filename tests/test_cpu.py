"""Knowing the CPU: /proc/cpuinfo and py-cpuinfo parsing, int8 notes, and the record in every result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import compress_core as cc
from compress_core.cli import main
from compress_core.ort import cpu, runtime
from compress_core.ort.artifacts import export_artifacts
from compress_core.ort.cpu import CpuInfo, cpu_features, from_py_cpuinfo, parse_proc_cpuinfo, read_cpu_features
from compress_core.ort.int8 import Int8Options
from compress_core.ort.runtime import cpu_from_record, int8_notes, runtime_line, runtime_record
from compress_core.pipeline import compress
from compress_core.plan import LayerConfig, Plan

X86_BASE = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 ssse3 fma sse4_1 sse4_2 popcnt aes avx f16c"


def x86_text(model: str, flags: str, processors: int = 2) -> str:
    """A /proc/cpuinfo of ``processors`` identical x86 processors."""
    block = (
        "processor\t: {index}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\n"
        f"model name\t: {model}\nstepping\t: 7\ncpu MHz\t\t: 2500.000\ncpu cores\t: {processors}\n"
        f"flags\t\t: {X86_BASE} {flags}\nbogomips\t: 5000.00\n\n"
    )
    return "".join(block.format(index=index) for index in range(processors))


AVX2_INTEL = x86_text("Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz", "bmi1 avx2 bmi2 erms", processors=4)
AVX512_NO_VNNI = x86_text("Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz", "avx2 avx512f avx512dq avx512cd avx512bw")
VNNI_INTEL = x86_text(
    "Intel(R) Xeon(R) Platinum 8272CL CPU @ 2.60GHz", "avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni"
)
AMX_INTEL = x86_text(
    "Intel(R) Xeon(R) Platinum 8480+",
    "avx2 avx512f avx512bw avx512_vnni avx_vnni avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8",
)
ARM_GRAVITON3 = "".join(
    f"processor\t: {index}\nBogoMIPS\t: 2100.00\n"
    "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma "
    "lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm "
    "svebf16 i8mm bf16 dgh rng\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: 0xd40\nCPU revision\t: 1\n\n"
    for index in range(2)
)
ARM_A72 = (
    "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n"
    "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
)


def parsed(text: str, machine: str = "", available: int | None = None) -> CpuInfo:
    info = parse_proc_cpuinfo(text, machine, available)
    assert info is not None
    return info


def test_avx2_only_intel():
    info = parsed(AVX2_INTEL, "x86_64")
    assert info.model == "Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz"
    assert (info.architecture, info.logical_cores, info.available_cores, info.source) == (
        "x86_64",
        4,
        4,
        "/proc/cpuinfo",
    )
    assert info.avx2 and not (info.avx512f or info.vnni or info.amx or info.dotprod or info.i8mm)
    assert info.int8_features() == ["AVX2"]


def test_avx512_vnni_intel():
    info = parsed(VNNI_INTEL)
    assert info.architecture == "x86_64"  # inferred from the flags line without platform.machine()
    assert info.avx512f and info.avx512_vnni and info.vnni and not info.avx_vnni and not info.amx
    assert info.int8_features() == ["AVX2", "AVX-512", "AVX-512 VNNI"]


def test_amx_intel():
    info = parsed(AMX_INTEL, "x86_64", available=1)
    assert info.amx and info.avx512_vnni and info.avx_vnni
    assert info.int8_features() == ["AVX2", "AVX-512", "AVX-512 VNNI", "AVX-VNNI", "AMX"]
    assert info.cores_text() == "1 of 2 cores"


def test_arm_with_dot_product_and_i8mm():
    info = parsed(ARM_GRAVITON3)
    assert (info.architecture, info.model, info.logical_cores) == ("aarch64", "Arm Neoverse-V1", 2)
    assert info.is_arm and info.dotprod and info.i8mm and not (info.avx2 or info.vnni)
    assert info.int8_features() == ["dot product", "i8mm"]


def test_arm_without_dot_product_named_by_its_part():
    info = parsed(ARM_A72, "aarch64")
    assert info.model == "Arm Cortex-A72" and not info.dotprod and not info.i8mm
    assert info.cores_text() == "1 core"


def test_text_without_flags_is_no_answer():
    assert parse_proc_cpuinfo("processor\t: 0\nmodel name\t: Mystery\n") is None
    assert parse_proc_cpuinfo("") is None


def test_py_cpuinfo_spellings():
    info = from_py_cpuinfo(
        {
            "brand_raw": "AMD EPYC",
            "arch_string_raw": "x86_64",
            "count": 8,
            "flags": ["avx2", "avx512f", "avx512vnni", "avxvnni", "amx_int8"],
        },
        available_cores=2,
    )
    assert (info.model, info.logical_cores, info.available_cores, info.source) == ("AMD EPYC", 8, 2, "py-cpuinfo")
    assert info.avx512_vnni and info.avx_vnni and info.amx


def test_falls_back_to_py_cpuinfo_without_proc(tmp_path, monkeypatch):
    monkeypatch.setattr(
        cpu,
        "_py_cpuinfo",
        lambda: {"brand_raw": "Apple M2", "arch_string_raw": "arm64", "count": 8, "flags": ["asimddp", "i8mm"]},
    )
    info = read_cpu_features(tmp_path / "no-such-cpuinfo")
    assert (info.model, info.architecture, info.source) == ("Apple M2", "arm64", "py-cpuinfo")
    assert info.is_arm and info.dotprod and info.i8mm


def test_neither_source_leaves_the_features_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu, "_py_cpuinfo", lambda: None)
    (tmp_path / "cpuinfo").write_text("processor\t: 0\n")
    info = read_cpu_features(tmp_path / "cpuinfo")
    assert info.source == "platform" and not info.known and info.int8_features() == []
    assert "could not be read" in int8_notes(info)[0]


def test_cpu_features_is_read_once_per_process():
    assert cpu_features() is cpu_features()


def test_int8_notes_per_kind():
    avx2 = int8_notes(parsed(AVX2_INTEL, "x86_64"))
    assert len(avx2) == 1 and avx2[0].startswith("AVX2 without VNNI:")
    assert "16 bits" in avx2[0] and "saturate" in avx2[0] and "at most about 2x" in avx2[0]
    assert int8_notes(parsed(AVX512_NO_VNNI, "x86_64"))[0].startswith("AVX-512 without VNNI:")
    vnni = int8_notes(parsed(VNNI_INTEL, "x86_64"))
    assert len(vnni) == 1 and vnni[0].startswith("VNNI (AVX-512 VNNI):") and "do not saturate" in vnni[0]
    amx = int8_notes(parsed(AMX_INTEL, "x86_64"))
    assert amx[0].startswith("AMX:") and amx[1].startswith("VNNI (AVX-512 and AVX VNNI):")
    arm = int8_notes(parsed(ARM_GRAVITON3))
    assert arm[0].startswith("i8mm:") and arm[1].startswith("Dot product (asimddp):")
    assert int8_notes(parsed(ARM_A72, "aarch64"))[0].startswith("No Arm dot-product extension:")
    plain = int8_notes(parsed(x86_text("Old", "sse4_2"), "x86_64"))
    assert plain[0].startswith("No AVX2:")


def test_runtime_record_and_line(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_features", lambda: parsed(VNNI_INTEL, "x86_64"))
    record = runtime_record(2)
    assert json.loads(json.dumps(record)) == record
    assert (record["threads"], record["threads_of"]) == (2, "onnxruntime") and record["onnxruntime"].count(".") >= 1
    assert record["cpu"]["int8_features"] == ["AVX2", "AVX-512", "AVX-512 VNNI"]
    assert cpu_from_record(record) == parsed(VNNI_INTEL, "x86_64")
    assert runtime_line(record) == (
        "CPU: Intel(R) Xeon(R) Platinum 8272CL CPU @ 2.60GHz, 2 cores; int8 features: AVX2, AVX-512, "
        f"AVX-512 VNNI; ORT {record['onnxruntime']}; 2 threads"
    )
    assert runtime_line(runtime_record(None)).endswith("; ORT's default threads")
    torch_record = runtime_record(4, threads_of="torch")
    assert torch_record["threads_of"] == "torch" and runtime_line(torch_record).endswith("; 4 torch threads")
    assert runtime_line(runtime_record(None, threads_of="torch")).endswith("; torch's default threads")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cpu") / "out"
    model = compress(cc.load_model("digits_mlp"), Plan(default=LayerConfig(bits=8)))
    export_artifacts(model, folder, Int8Options(calibration_samples=16))
    return folder


def test_export_records_the_cpu(exported):
    metrics = json.loads((exported / "metrics.json").read_text())
    record = metrics["runtime"]
    assert record == json.loads(json.dumps(runtime_record(None)))
    assert record["cpu"]["model"] == cpu_features().model and record["threads"] is None
    report = (exported / "report.md").read_text()
    assert f"Measured on {runtime_line(record)}." in report
    assert all(note in report for note in int8_notes(cpu_features()))


def test_export_names_the_int8_path_and_its_rule(exported):
    from compress_core.ort.int8_path import SATURATING_RULES, rule_for

    quantized = json.loads((exported / "metrics.json").read_text())["int8"]
    path, rule = quantized["path"], rule_for(cpu_features())
    assert path["rule"] == rule and not path["overridden"] and path["kernel"] in ("U8S8", "U8U8", "S8S8")
    assert quantized["activations"] == path["activations"]
    assert bool(quantized["saturation"]) == (rule in SATURATING_RULES)  # measured only where U8S8 can saturate
    assert quantized["padded_convs"] == []  # an MLP has no Conv to pad
    report = (exported / "report.md").read_text()
    assert f"{path['kernel']} (rule {rule})" in report and f"int8 path: {path['kernel']}" in report


def test_bench_prints_the_cpu_line_first(exported, capsys):
    capsys.readouterr()
    assert main(["bench", str(exported), "--runs", "1", "--warmup", "0", "--batch", "8", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{runtime_line(runtime_record(1))}; measured on host ")
    assert lines[0].startswith(f"CPU: {cpu_features().model}, ") and "; 1 thread; " in lines[0]
    assert [line for line in lines if line.startswith("this CPU: ")] == [
        f"this CPU: {note}" for note in int8_notes(cpu_features())
    ]
    assert main(["bench", str(exported), "--runs", "1", "--warmup", "0", "--batch", "8", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(row["runtime"] == json.loads(json.dumps(runtime_record(2))) for row in rows)
