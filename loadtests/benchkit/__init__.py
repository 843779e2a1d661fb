"""The side-by-side benchmark behind ``loadtests/bench``: fastingress vs nginx (see loadtests/README.md).

Modules:
  procs      starting and stopping processes, CPU accounting from /proc, readiness checks;
  configs    nginx configurations (upstream, proxy with ingress-nginx defaults), manifests, TLS pair;
  load       wrk and h2load command lines and the parsing of what they print;
  profiling  py-spy (or cProfile) around one fastingress worker, and the "top costs" summary;
  cases      the protocols and the suite (one line per row of issue 7's table);
  cli        the command line, one run, the tables and the JSON.
Not part of CI; nothing outside loadtests/ imports it.
"""
