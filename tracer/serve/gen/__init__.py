"""Generated from proto/provtrace/v1 by proto/gen.sh; do not edit."""
