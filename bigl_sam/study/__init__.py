"""The quality study's tooling (docs/study.md): the rows that are not a registry model (plain token pruning,
random routing), bootstrap intervals over eval's records, and the study's plots."""
