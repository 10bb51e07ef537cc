"""The phases: scored data split into phases of increasing difficulty, and the experiment design built on them.

    split.py    the split itself (`split_into_phases`, `write_split`, `METHODS`: thresholds, quantiles), the phase
                files and `phases/manifest.json` (`read_manifest`, `write_phases`)
    design.py   the arms (`ARMS`: what each trains on, its phase count and schedule), the training and evaluation
                cells, the pairwise judge jobs, the control arms' phase data (`controls`)
    step.py     the split step's body (`split_step`)

Pang et al., ACL Findings 2024, Section 3. Callers import the submodules (`from phased_ift.phases.design import
ARMS`); the Python API's verb `phased_ift.split` is `phases.split.split_into_phases` behind `api.inputs.split`.
"""
