"""Checks of loadtests/benchkit (not collected by the suite: run
``.venv/bin/pytest loadtests/test_benchkit.py -q``).

Parsers get the text wrk and h2load really print; every nginx configuration the benchmark can generate
goes through ``nginx -t``; the suite's lines go through the real command-line parser.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from benchkit import cases, cli, configs, load, profiling

WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:35907/
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.06ms    3.87ms  38.80ms   97.19%
    Req/Sec     5.88k     1.55k    9.27k    80.00%
  Latency Distribution
     50%   95.00us
     75%  564.00us
     90%    2.12ms
     99%   25.84ms
  5853 requests in 1.00s, 0.93MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:   5849.03
Transfer/sec:      0.93MB
"""

H2LOAD_OUTPUT = """\
starting benchmark...
spawning thread #0: 2 total client(s). Timing-based test with 0s of warm-up time and 1s of main duration
Application protocol: h2c

finished in 1.01s, 2000.00 req/s, 134.89KB/s
requests: 2002 total, 2002 started, 2002 done, 2000 succeeded, 2 failed, 2 errored, 0 timeout
status codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 134.89KB (138132) total, 93.75KB (96000) headers (space savings 51.02%), 5.86KB (6000) data
                     min         max         mean         sd        +/- sd
time for request:       41us      5.02ms       226us       543us    94.00%
time for connect:       59us        83us        71us        16us   100.00%
time to 1st byte:      328us       352us       340us        17us   100.00%
req/s           :    7885.86     7891.94     7888.90        4.29   100.00%
"""


def test_parse_wrk() -> None:
    got = load.parse_wrk(WRK_OUTPUT)
    assert got == {"requests": 5853, "seconds": 1.0, "rps": 5849.03, "p50_ms": 0.095, "p99_ms": 25.84,
                   "errors": 11}


def test_parse_h2load_with_percentiles_from_its_log(tmp_path: Path) -> None:
    got = load.parse_h2load(H2LOAD_OUTPUT)
    assert (got["requests"], got["rps"], got["errors"]) == (2002, 2000.0, 4)
    assert (got["p50_ms"], got["p99_ms"]) == (0.226, 5.02)  # mean and max without a log
    log = tmp_path / "h2load.log"
    log.write_text("".join(f"1796428954611827\t200\t{us}\n" for us in range(1, 201)))  # 1..200 µs
    h2 = load.Load(load.PROTOCOLS["h2c"], connections=2, threads=1, streams=2)
    figures = load.parse_load(h2, H2LOAD_OUTPUT, log)
    assert (figures["p50_ms"], figures["p99_ms"]) == (0.100, 0.198)


def test_client_command_lines(tmp_path: Path) -> None:
    close = load.Load(load.PROTOCOLS["tls-handshake"], 50, 1, 1, "/", upload_script=tmp_path / "u.lua")
    argv = load.wrk_argv("wrk", "https://127.0.0.1:1/", close, 3)
    assert argv[argv.index("-H") + 1] == "Connection: close"
    assert argv[argv.index("-s") + 1] == str(tmp_path / "u.lua")
    h2 = load.Load(load.PROTOCOLS["h2"], 4, 1, 8, "/upload", upload_data=tmp_path / "u.bin")
    argv = load.h2load_argv("h2load", "https://127.0.0.1:1/upload", h2, 3, tmp_path / "log")
    assert argv[argv.index("-m") + 1] == "8" and argv[argv.index("-d") + 1] == str(tmp_path / "u.bin")


def test_sizes() -> None:
    assert [configs.parse_size(s) for s in ("64k", "1m", "1MiB", "512")] == [65536, 1048576, 1048576, 512]
    with pytest.raises(ValueError, match="not a size"):
        configs.parse_size("1g")
    assert (configs.nginx_size(65536), configs.nginx_size(2 * configs.MIB)) == ("64k", "2m")
    assert configs.human_size(65536) == "64 KiB"


def test_nginx_set_replaces_a_default_or_adds() -> None:
    directives = configs.proxy_location(configs.MIB, ("client_body_buffer_size 1m;", "sendfile on",
                                                      "proxy_set_header x-real-ip $http_x_real_ip"))
    assert "client_body_buffer_size 8k" not in directives and "client_body_buffer_size 1m" in directives
    assert "sendfile on" in directives
    real_ip = [d for d in directives if "-real-ip" in d.lower()]
    assert real_ip == ["proxy_set_header x-real-ip $http_x_real_ip"]
    assert "proxy_buffering off" in directives and "proxy_request_buffering on" in directives


@pytest.mark.skipif(shutil.which("nginx", path="/usr/sbin:/usr/bin") is None, reason="no nginx")
@pytest.mark.parametrize("protocol", sorted(load.PROTOCOLS))
def test_generated_nginx_configs_pass_nginx_t(tmp_path: Path, protocol: str) -> None:
    nginx = shutil.which("nginx", path="/usr/sbin:/usr/bin")
    assert nginx is not None
    spec = load.PROTOCOLS[protocol]
    tls = configs.tls_files(tmp_path) if spec.tls else None
    server = configs.upstream_server(1, tmp_path / "files") + configs.proxy_server(
        2, 1, http2=spec.h2, tls=tls, max_body=8 * configs.MIB, overrides=("sendfile on",))
    conf = configs.nginx_conf(tmp_path, "proxy", 1, server)
    done = subprocess.run([*configs.nginx_argv(nginx, tmp_path, conf), "-t"], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr + conf.with_suffix(".startup.log").read_text()


def test_manifests_carry_the_body_limit(tmp_path: Path) -> None:
    for limit, expected in ((configs.MIB, None),
                            (8 * configs.MIB, {"nginx.ingress.kubernetes.io/proxy-body-size": "8m"})):
        (tmp_path / str(limit)).mkdir()
        folder = configs.fastingress_manifests(tmp_path / str(limit), 1234, limit)
        ingress = list(yaml.safe_load_all((folder / "bench.yaml").read_text()))[-1]
        assert ingress["kind"] == "Ingress"
        assert ingress["metadata"].get("annotations") == expected


def test_profile_summary_of_the_main_thread(tmp_path: Path) -> None:
    frames = [{"name": "run", "file": "/x/site-packages/trio/_core/_run.py", "line": 1},
              {"name": "_handle", "file": "/elsewhere/workers/proxy.py", "line": 2},
              {"name": "next_event", "file": "/x/site-packages/h11/_connection.py", "line": 3},
              {"name": "_work", "file": "/x/site-packages/trio/_core/_thread_cache.py", "line": 4}]
    main = [[0, 1, 2]] * 3 + [[0, 1]]
    data = {"shared": {"frames": frames},
            "profiles": [{"name": 'Thread 7 "MainThread"', "samples": main, "weights": [0.01] * 4},
                         {"name": 'Thread 8 "Trio thread 0"', "samples": [[3]] * 5, "weights": [0.01] * 5}]}
    path = tmp_path / "round-1.speedscope.json"
    path.write_text(json.dumps(data))
    text = profiling.summarise_speedscope([path], seconds=1, rate=4)
    assert "4 samples of the worker's main thread" in text and "Trio thread 0 5" in text
    assert " 75.0%  75.0%  next_event (h11/_connection.py:3)" in text
    assert " 25.0% 100.0%  _handle (workers/proxy.py:2)" in text
    assert " 75.0%  75.0%  h11" in text and "_work" not in text


def test_every_suite_line_is_a_valid_command() -> None:
    parser = cli.build_parser()
    defaults = parser.parse_args([])
    common = cases.common_argv(parser.parse_args(["--rounds", "1", "--duration", "3"]), defaults)
    labels = set()
    for line in cases.SUITE:
        args = parser.parse_args([*line.argv, *common])
        assert cli.validate(args, parser) is None, line.name
        labels.add(cases.case_label(args))
    assert len(labels) == len(cases.SUITE)  # every line says what it is
    assert cases.case_label(parser.parse_args(["--body", "1m", "--connections", "10"])) == \
        "1 MiB bodies (download), c10, 1 worker each"


def test_suite_refuses_options_it_sets_itself() -> None:
    parser = cli.build_parser()
    assert "--connections" in str(cli.validate(parser.parse_args(["--suite", "--connections", "8"]), parser))
    with pytest.raises(ValueError, match="unknown suite line"):
        cases.suite_lines("small,nope")
    assert [line.name for line in cases.suite_lines("tls,small")] == ["small", "tls"]


def test_scaling_line() -> None:
    one = {"fastingress": {"rps": 100.0, "cpu_us_per_req": 200.0}}
    two = {"fastingress": {"rps": 150.0, "cpu_us_per_req": 220.0}}
    assert cases.scaling_lines({"workers-1": one, "workers-2": two}) == [
        "2 workers vs 1 (same client, wrk -t2 -c50): fastingress x1.50 req/s (CPU/req x1.10)"]
    assert cases.scaling_lines({"workers-1": one}) == []


def test_profile_options_are_checked() -> None:
    parser = cli.build_parser()
    complaint = cli.validate(parser.parse_args(["--profile", "--workers", "2"]), parser)
    assert complaint == "--profile profiles the one worker of --workers 1"
    assert cli.validate(parser.parse_args(["--dry-run"]), parser) == "--dry-run goes with --suite"
    kept = cli.without_output(["--json", "x.json", "--connections", "50", "--json=y"])
    assert kept == ["--connections", "50"]
    assert isinstance(parser.parse_args(["--profile"]).profile, Path)
