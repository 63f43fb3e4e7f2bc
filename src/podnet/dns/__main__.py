"""`python -m podnet.dns serve -f DIR --listen 0.0.0.0:53`: the DNS commands on
their own, e.g. inside a kube-dns pod's network namespace in the lab."""

from ..cli.dns import dns_group

dns_group(prog_name="python -m podnet.dns")
