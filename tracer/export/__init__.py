"""provtrace: tracer/export. provtrace.run/1 documents as W3C PROV (prov.py), OpenLineage
(openlineage.py), GraphML and DOT (graph_formats.py); exporter.py picks the format and writes it."""
