# Despliegue: one entry point. `make serve` and `make test` are the README's two commands.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The Python client as a user installs it: bentoml alone, no service code (tests/client/).
CLIENT_VENV ?= .venv-client
# Open Inference Protocol clients we did not write: tritonclient[http] and kserve (tests/client/).
V2_CLIENT_VENV ?= .venv-v2client
PORT ?= 3000
export TF_CPP_MIN_LOG_LEVEL ?= 2
# BentoML's usage telemetry stays off for every target (serve, build, container...);
# `make serve BENTOML_DO_NOT_TRACK=false` turns it on.
export BENTOML_DO_NOT_TRACK ?= true

.PHONY: help venv client-venv v2-client-venv test-tools models serve batch test unit soak-check \
	postgresql fuzz lint \
	build bench bench-flood bench-quick bench-runtimes peer-venvs stress profile soak face-memory clean \
	container-tools \
	container-base container container-test container-clean k8s-config

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | \
		sed -e 's/:.*## /\t/' -e 's/\$$(PORT)/$(PORT)/g' -e 's/\$$(IMAGE)/$(IMAGE)/g'

venv: $(VENV)/.installed  ## create .venv with the pinned packages

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-mlflow.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	touch $@

client-venv: $(CLIENT_VENV)/.installed  ## a venv with only the Python client (bentoml), for tests/client

$(CLIENT_VENV)/.installed: requirements.txt constraints.txt
	$(PYTHON) -m venv $(CLIENT_VENV)
	$(CLIENT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		"$$(grep '^bentoml==' requirements.txt)" -c constraints.txt
	touch $@

v2-client-venv: $(V2_CLIENT_VENV)/.installed  ## a venv with only tritonclient[http] and kserve, for tests/client

$(V2_CLIENT_VENV)/.installed: requirements-v2client.txt constraints-v2client.txt
	$(PYTHON) -m venv $(V2_CLIENT_VENV)
	$(V2_CLIENT_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		-r requirements-v2client.txt -c constraints-v2client.txt
	touch $@

test-tools:  ## install Debian's chromium, chromium-driver, curl, prometheus (promtool) and Java for the tests
	scripts/test-tools.sh

models: venv  ## build the reference models missing from the BentoML model store
	$(BIN)/python save_models.py

serve: models  ## serve every family on localhost:$(PORT), auth OFF (local development only)
	DESPLIEGUE_AUTH=off $(BIN)/python -m despliegue.serving --host 127.0.0.1 --port $(PORT)

# Score many items offline (README "Scoring many items"): FAMILY, INPUT and OUTPUT as the
# command takes them; BATCH_ARGS for the rest (--column, --model TAG, --batch-size, --top-k).
batch: models  ## score a folder or table offline: make batch FAMILY=flowers INPUT=photos/ OUTPUT=scores.parquet
	@test -n "$(FAMILY)" -a -n "$(INPUT)" -a -n "$(OUTPUT)" || \
		{ echo "usage: make batch FAMILY=flowers INPUT=photos/ OUTPUT=scores.parquet"; exit 1; }
	$(BIN)/python -m despliegue.batch $(FAMILY) $(INPUT) -o $(OUTPUT) $(BATCH_ARGS)

# The test command: every module on both cores; a module's tests stay on one worker
# (--dist loadscope), so a server a module starts is started once (the session's shared server
# once per worker). The tests that measure the machine (marked serial: the soak pins cores and
# judges memory over minutes) need it alone and run in `make soak-check`, a CI step of its own.
# The run ranks its 30 slowest tests; a failure, or no test collected (exit 5), fails the target.
# The reference models are built once per run, before pytest, into .test-home (emptied first,
# so no model of an earlier checkout is tested): each worker starts from a copy. Each worker
# used to build its own, both at once on the two cores. DESPLIEGUE_TEST_MODELS naming a store
# already built skips the step (a store kept between runs while editing; save_models.py still
# checks it and builds what is missing).
PYTEST_WORKERS ?= 2
TEST_HOME := $(CURDIR)/.test-home
test: venv client-venv v2-client-venv postgresql  ## run the whole test suite (unit, live server, browser, client, build)
	@# Without the browser the UI tests skip saying why (and fail when CI=true).
	-@scripts/test-tools.sh
	@if [ -z "$$DESPLIEGUE_TEST_MODELS" ]; then \
		echo "building the reference models once for the run (log: $(TEST_HOME)/models.log)"; \
		rm -rf "$(TEST_HOME)" && mkdir -p "$(TEST_HOME)" && \
		BENTOML_HOME="$(TEST_HOME)/bentoml" $(BIN)/python save_models.py \
			>"$(TEST_HOME)/models.log" 2>&1 || { tail -40 "$(TEST_HOME)/models.log"; exit 1; }; \
	fi
	DESPLIEGUE_TEST_MODELS="$${DESPLIEGUE_TEST_MODELS:-$(TEST_HOME)/bentoml/models}" \
	DESPLIEGUE_TEST_MODELS_LOG="$${DESPLIEGUE_TEST_MODELS_LOG:-$(TEST_HOME)/models.log}" \
		$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadscope -m "not serial" --durations=30

unit: venv  ## the inner loop (< 1 min): tests/unit without the tests that start processes
	$(BIN)/python -m pytest tests/unit -m "not processes" -q

soak-check: venv  ## the checks of memory over time, alone on the machine: the 3-minute soak and the face runner over varied image sizes (CI runs them after `make test`)
	DESPLIEGUE_SOAK_MINUTES=3 $(BIN)/python -m pytest tests/integration/test_soak.py \
		tests/integration/test_image_memory.py -m serial --durations=5

postgresql:  ## install Debian's PostgreSQL for the MLflow test (root, apt; says why if it cannot)
	-scripts/postgresql.sh

fuzz: venv  ## schemathesis, 500 cases per operation and token kind, a new seed each run
	DESPLIEGUE_FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-500} DESPLIEGUE_FUZZ_SEED=$${FUZZ_SEED:-random} \
		$(BIN)/python -m pytest tests/contract -s

lint: venv  ## ruff lint + format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

build: models  ## bentoml build: one Bento with code, configuration, models and what was promoted
	$(BIN)/python -m despliegue.lifecycle.pack $(BIN)/bentoml build

# The peer model servers `make bench` compares with, each in its own venv from pinned files in
# benchmarks/peers/ (they conflict with each other and with the service's pins).
PEERS := ray mlserver
PEER_VENVS := $(PEERS:%=.venv-%/.installed)

peer-venvs: $(PEER_VENVS)  ## the peers' venvs: .venv-ray (Ray Serve), .venv-mlserver (MLServer)

$(PEER_VENVS): .venv-%/.installed: benchmarks/peers/requirements-%.txt benchmarks/peers/constraints-%.txt
	$(PYTHON) -m venv .venv-$*
	.venv-$*/bin/python -m pip install --quiet --disable-pip-version-check \
		-r benchmarks/peers/requirements-$*.txt -c benchmarks/peers/constraints-$*.txt
	touch $@

bench: venv peer-venvs models  ## benchmark: limit, batching on/off, seed designs, Ray Serve, MLServer, runtimes
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.runtimes

bench-runtimes: models  ## TensorFlow vs ONNX Runtime vs OpenVINO on the stored Keras models, one core
	$(BIN)/python -m benchmarks.runtimes

bench-flood: venv  ## /heatflow latency while large photos flood /face (admission), against the SLO
	$(BIN)/python -m benchmarks.flood

bench-quick: venv peer-venvs  ## the whole benchmark with short points (~15 min), to check the harness
	$(BIN)/python -m benchmarks.run --quick

stress: venv  ## locust stress: users doubling until the configured SLO breaks, per endpoint
	$(BIN)/python -m benchmarks.stress

soak: venv  ## 30 min, every family at 70% of capacity: errors, p99/minute, RSS per process
	$(BIN)/python -m benchmarks.soak $(if $(SOAK_MINUTES),--minutes $(SOAK_MINUTES))

face-memory: venv  ## 2,000 /face requests of varied sizes: does the face runner's RSS stay flat?
	$(BIN)/python -m benchmarks.face_memory

profile: venv  ## py-spy profile of every worker under load: make profile BENCH_PATH=heatflow
	$(BIN)/python -m benchmarks.profile --path $(or $(BENCH_PATH),heatflow)
# --- Container image (no Docker daemon needed: buildah builds, podman runs) -----------------
# The engine settings live in the repo: runc, ulimits this host allows, overlay storage.
export CONTAINERS_CONF ?= $(CURDIR)/deploy/containers/containers.conf
export CONTAINERS_STORAGE_CONF ?= $(CURDIR)/deploy/containers/storage.conf
IMAGE ?= despliegue
# PEM bundle bind-mounted read-only into the build's RUN steps only (TLS-intercepting proxies);
# never copied into the image. `make container CA_BUNDLE=` builds without it.
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt
export IMAGE CA_BUNDLE

container-tools:  ## install buildah, podman, skopeo, mmdebstrap, runc (root, apt)
	scripts/container-tools.sh

container-base: container-tools  ## build the offline Debian/Python 3.11 base image once
	scripts/container-base.sh

container: models container-base  ## Bento -> OCI image $(IMAGE):<version> + dist/$(IMAGE).oci.tar
	BENTOML=$(abspath $(BIN))/bentoml PYTHON=$(abspath $(BIN))/python PATH=$(abspath $(BIN)):$$PATH scripts/container-image.sh

container-test: container  ## run the image with podman; every family answers; cold start
	DESPLIEGUE_IMAGE=$$(cat dist/image.txt) DESPLIEGUE_CONTAINER_REPORT=dist/container-test.json \
		$(BIN)/python -m pytest tests/container -s -q -p no:cacheprovider

container-clean:  ## remove the built images, their build cache and dist/ (keeps the base images)
	-podman images --format '{{.Repository}}:{{.Tag}}' | grep '/$(IMAGE):' | xargs -r podman rmi -f
	-podman image prune -f
	rm -rf dist

k8s-config: venv  ## regenerate deploy/k8s/common/configmap.yaml from configuration.yaml
	$(BIN)/python scripts/k8s_configmap.py

clean:  ## remove the virtual environments and the test run's model store
	rm -rf $(VENV) $(CLIENT_VENV) $(V2_CLIENT_VENV) $(PEERS:%=.venv-%) $(TEST_HOME)
