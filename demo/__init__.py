"""``make demo`` (``python -m demo``): the whole of RoleCall on one machine, and the stand-in
guest (`demo.guest`) that the demo, the namespace tests and the benchmarks link to an instance.
Not part of either daemon: neither package imports it."""
