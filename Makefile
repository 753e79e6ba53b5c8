# Stage 4 rollout. Two commands on a fresh Debian 12 machine (as root):
#   make demo   installs what is missing, creates the local BIBLIOTECA (251 features) and runs Stage 4
#   make test   unit and integration tests, lint, the fast fault cases and the molecule scenarios
#   make bench  the same run on a big reference database (1,000,000 features), the gate judging latency
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
# The Supabase CLI that pushes the exported migrations in the tests (pinned in its package-lock.json).
SUPABASE_CLI := tools/supabase-cli/node_modules/.bin/supabase
BIN := $(VENV)/bin
# The wheel whose census tracts scripts/reference_db.py --dataset real reads (tools/real-polygons).
REAL_POLYGONS := tools/real-polygons/libpysal-4.14.1-py3-none-any.whl
LOCALDB_PORT ?= 55432
FEATURES ?= 251
# synthetic outlines, or real census tracts' (scripts/reference_db.py --dataset real)
DATASET ?= synthetic
# Debian packages: the server, PostGIS and pg_cron for PostgreSQL 15, the matching pg_dump; PgBouncer
# for the test of a transaction-mode pooler.
APT_PACKAGES := postgresql-15 postgresql-15-postgis-3 postgresql-15-cron postgresql-client-15 python3-venv chromium pgbouncer

export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_FORCE_COLOR := 0
LOCAL_DB_ENV = DB_HOST=127.0.0.1 DB_PORT=$(LOCALDB_PORT) DB_NAME=BIBLIOTECA DB_USER=postgres DB_PASSWORD="$$(cat .localdb/password)"

.PHONY: help setup system-packages demo localdb fixture test unit integration lint faults-fast faults faults-1m molecule bench bench-1m pgbench-ratio clean

help:
	@echo "make demo    - set up, create the local BIBLIOTECA ($(FEATURES) features) and run stage4.yml -i local"
	@echo "make test    - unit (no PostgreSQL) and integration tests, ansible-lint, the fast fault cases and every molecule scenario"
	@echo "make faults  - the whole fault suite (bad input, backup failures, two runs, kill -9 at every step)"
	@echo "make faults-1m - its cases that stop before any change, and two runs at once, at 1,000,000 features"
	@echo "make bench   - Stage 4 on BENCH_FEATURES=$(BENCH_FEATURES) features in its own cluster (reports/bench); also make bench-1m"
	@echo "make pgbench-ratio - the benchmark module's QPS per query against pgbench -M prepared"
	@echo "make clean   - stop and delete the local cluster, reports and backups"

setup: system-packages $(VENV)/.installed collections/.installed $(SUPABASE_CLI) $(REAL_POLYGONS)

# Debian would create and start a "main" cluster on port 5432 when installing the server; we run
# our own clusters on their own ports, so tell it not to.
system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  mkdir -p /etc/postgresql-common/createcluster.d; \
	  echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/stage4.conf; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(REAL_POLYGONS): tools/real-polygons/requirements.txt $(VENV)/.installed
	$(BIN)/pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
	  -r tools/real-polygons/requirements.txt -d tools/real-polygons
	touch $@

$(SUPABASE_CLI): tools/supabase-cli/package-lock.json
	command -v npm >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null)
	npm ci --prefix tools/supabase-cli --no-audit --no-fund --loglevel=error
	touch $@

collections/.installed: requirements.yml $(VENV)/.installed
	$(BIN)/python scripts/install_collections.py
	touch $@

localdb: setup
	$(BIN)/python scripts/localdb.py start

fixture: localdb
	$(LOCAL_DB_ENV) $(BIN)/python scripts/reference_db.py --host 127.0.0.1 --port $(LOCALDB_PORT) \
	  --user postgres --dbname BIBLIOTECA --features $(FEATURES) --dataset $(DATASET)

demo: fixture
	$(LOCAL_DB_ENV) $(BIN)/ansible-playbook stage4.yml -i local

# Two test files at a time, each with its own throwaway cluster: a test mostly waits for PostgreSQL
# (the cluster tests went from 4 min 54 s to 2 min 47 s on 2 cores). PYTEST_JOBS=0 runs them one by one.
PYTEST_JOBS ?= 2
PYTEST = $(BIN)/pytest -q -n $(PYTEST_JOBS) --dist loadfile

# No PostgreSQL: STAGE4_PG_BIN points nowhere, so a test here that started a cluster would fail.
unit: setup
	STAGE4_PG_BIN=/nonexistent $(BIN)/pytest -q tests/unit

# Against throwaway PostGIS clusters (tests/pgcluster.py), and the report in headless Chromium.
integration: setup
	$(PYTEST) tests/integration

lint: setup
	$(BIN)/ansible-lint -q
	$(BIN)/ansible-doc biblioteca.stage4.gis_benchmark biblioteca.stage4.stage4_change >/dev/null
	$(BIN)/ansible-doc -t lookup biblioteca.stage4.stage4_plan >/dev/null
	$(BIN)/ansible-doc -t filter biblioteca.stage4.stage4_gate biblioteca.stage4.stage4_report_data \
	  biblioteca.stage4.stage4_report_html >/dev/null

# The fault suite: the fast cases run in `make test`; `make faults` adds a kill -9 at every step.
faults-fast: setup
	$(PYTEST) tests/faults -m "not every_step"

# Schema fuzzing: 20 fixed examples in make test, 200 new ones here (tests/faults/test_schema_fuzz.py).
faults: setup
	STAGE4_FUZZ_EXAMPLES=200 STAGE4_FUZZ_RANDOM=1 $(PYTEST) tests/faults

# The cases that stop before any change, and two runs at once, against a 1,000,000-feature reference database.
faults-1m: setup
	STAGE4_FAULTS_FEATURES=1000000 $(BIN)/pytest -q tests/faults/test_faults.py \
	  -k "bad_input or malformed or privileges or full_disk or backup_that_fails or second_run"

# The four scenarios, two at a time (each has its own cluster, port and folder): about 23 min one
# after the other on 2 cores, most of it Ansible's own single-threaded work. Each scenario's output
# is printed together when it ends. (molecule's --workers needs a collection's galaxy.yml.)
MOLECULE_SCENARIOS = default failures modes rollback
molecule: setup
	$(MAKE) --no-print-directory -j2 -Otarget $(addprefix molecule-,$(MOLECULE_SCENARIOS))

molecule-%: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/molecule test -s $*

test: unit lint integration faults-fast molecule

# A benchmark, not a test: its own cluster and database, BENCH_FEATURES features (about 4 minutes
# to build a million, reused by later runs; BENCH_RECREATE=1 rebuilds it), then the whole Stage 4
# with the default settings of prod: the gate judging latency, each stage's measurement within its
# time budget, every query measured as the owner, anon and an authenticated user (the reference
# data's first owner, as inventories/local says; that inventory measures the owner only otherwise).
# The cluster is restarted with BENCH_SHARED_BUFFERS, enough to hold the database and its views
# (scripts/localdb.py says why). BENCH_ARGS adds ansible-playbook options. DATASET=real gives the
# features real census-tract outlines (scripts/reference_db.py --dataset real), in their own database.
BENCH_FEATURES ?= 1000000
BENCH_DB = BIBLIOTECA_BENCH$(if $(filter real,$(DATASET)),_REAL)
BENCH_DIR ?= /tmp/stage4-bench
BENCH_PORT ?= 55433
BENCH_SHARED_BUFFERS ?= 4GB
BENCH_CLUSTER_ENV = STAGE4_LOCALDB_DIR=$(BENCH_DIR) STAGE4_LOCALDB_PORT=$(BENCH_PORT) \
	STAGE4_LOCALDB_SHARED_BUFFERS=$(BENCH_SHARED_BUFFERS)
BENCH_DB_ENV = $(BENCH_CLUSTER_ENV) DB_HOST=127.0.0.1 \
	DB_PORT=$(BENCH_PORT) DB_NAME=$(BENCH_DB) DB_USER=postgres DB_PASSWORD="$$(cat $(BENCH_DIR)/password)"
bench: setup
	$(BENCH_CLUSTER_ENV) $(BIN)/python scripts/localdb.py restart
	$(BENCH_DB_ENV) $(BIN)/python scripts/reference_db.py --host 127.0.0.1 --port $(BENCH_PORT) --user postgres \
	  --dbname $(BENCH_DB) --features $(BENCH_FEATURES) --dataset $(DATASET) $(if $(BENCH_RECREATE),--recreate)
	$(BENCH_DB_ENV) $(BIN)/ansible-playbook stage4.yml -i local -e stage4_expected_features=$(BENCH_FEATURES) \
	  -e stage4_reports_root=$(CURDIR)/reports/bench -e stage4_backup_dir=$(BENCH_DIR)/backups \
	  -e '{"stage4_benchmark_roles": [{"label": "", "role": ""}, {"label": "anon", "role": "anon"}, {"label": "authenticated", "role": "authenticated", "claims": "{{ stage4_benchmark_authenticated_claims }}"}]}' \
	  $(BENCH_ARGS)

bench-1m: bench

# The benchmark module's per-query throughput against pgbench -M prepared on the local BIBLIOTECA
# (make fixture first): same query, clients and duration (BENCHMARKS.md, "Client overhead").
RATIO_CLIENTS ?= 1
pgbench-ratio: fixture
	$(LOCAL_DB_ENV) $(BIN)/python scripts/pgbench_ratio.py --host 127.0.0.1 --port $(LOCALDB_PORT) --user postgres \
	  --dbname BIBLIOTECA --clients $(RATIO_CLIENTS) --seconds 3 --rounds 5 --json reports/pgbench_ratio.json

clean:
	-$(BIN)/python scripts/localdb.py destroy
	rm -rf reports backups
