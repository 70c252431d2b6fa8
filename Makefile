# The two commands of the README: `make demo` runs the main job, `make test` runs the tests.
# Both install what they need first (Debian packages, the virtual environment), idempotently.

.PHONY: setup demo test powercut bench lint format

setup:
	bash scripts/setup

demo: setup
	bash scripts/demo

test: setup
	bash scripts/test

# An engine that already answers is someone else's: left running. One this target starts, it stops.
ENGINE = scripts/engines status >/dev/null 2>&1 || { scripts/engines start && trap "scripts/engines stop" EXIT; }

powercut: setup
	bash -c '$(ENGINE) && .venv/bin/aoscore powercut && .venv/bin/aoscore powercut --fs lossy --report powercut-report --junit powercut.xml && .venv/bin/aoscore powercut --fs lossy --random 30 --seed 1'

bench: setup
	bash -c '$(ENGINE) && scripts/bench supersede --json bench-supersede.json && scripts/bench download --json bench-download.json'

lint: setup
	.venv/bin/ruff check aoscore_py statemachine tests scripts
	.venv/bin/ruff format --check aoscore_py statemachine tests scripts

format: setup
	.venv/bin/ruff format aoscore_py statemachine tests scripts
	.venv/bin/ruff check --fix aoscore_py statemachine tests scripts
