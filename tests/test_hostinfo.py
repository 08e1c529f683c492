"""hostinfo.py: the CPU named beside every speed the project writes down."""

from emotion_server import hostinfo
from emotion_server.config import available_cpus

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16
processor\t: 1
model name\t: Some Other CPU
flags\t\t: fpu sse
"""


def test_cpuinfo_gives_the_first_processors_name_and_flags():
    model, flags = hostinfo.parse_cpuinfo(CPUINFO)
    assert model == "AMD EPYC 9R14"
    assert {"avx2", "avx512_vnni", "avx512_bf16"} <= flags and "fpu" in flags
    assert hostinfo.parse_cpuinfo("") == ("", frozenset())


def test_the_widest_vector_instructions_name_the_cpus_class():
    assert hostinfo.vector_isa(frozenset({"avx2", "fma"})) == "AVX2"
    assert hostinfo.vector_isa(frozenset({"avx2", "avx512f"})) == "AVX-512"
    assert hostinfo.vector_isa(hostinfo.parse_cpuinfo(CPUINFO)[1]) == "AVX-512 VNNI"
    assert hostinfo.vector_isa(frozenset({"avx2", "avx512_vnni", "amx_int8"})) == "AMX"
    assert hostinfo.vector_isa(frozenset({"avx2", "avx_vnni"})) == "AVX-VNNI"
    assert hostinfo.vector_isa(frozenset({"sse4_2"})) == "no AVX2"
    assert hostinfo.vector_isa(frozenset()) == "unknown ISA"


def test_this_machine_is_described_by_its_own_flags():
    flags = hostinfo.cpu_flags()
    assert hostinfo.cpu().endswith(f" ({hostinfo.vector_isa(flags)})")
    assert hostinfo.describe().startswith(hostinfo.cpu() + ", ")
    cores = available_cpus()
    assert hostinfo.describe().endswith(f", {cores} core{'' if cores == 1 else 's'}")
