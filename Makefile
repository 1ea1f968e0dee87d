# botwatch: `make demo` and `make test` work from a fresh clone (each runs setup first when needed).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.setup-stamp
JARS_STAMP := jvm/jars/.stamp

.PHONY: setup jars browser test demo bench lint clean

setup: $(SETUP_STAMP) $(JARS_STAMP)

# Re-runs only when setup.py changes. The venv takes about 8 GB (torch's CUDA libraries): no pip cache
# beside it, since a full disk is what fails a fresh machine's setup.
$(SETUP_STAMP): setup.py
	@free_kb=$$(df -Pk . | awk 'NR==2 {print $$(NF-2)}'); case "$$free_kb" in ''|*[!0-9]*) ;; *) \
	  [ "$$free_kb" -ge 10000000 ] || \
	  echo "warning: $$((free_kb / 1024)) MiB free here; setup needs about 10 GB (the venv and its downloads)" >&2;; esac
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-cache-dir --upgrade pip setuptools wheel
	$(PY) -m pip install -q --no-cache-dir -e '.[dev]'
	touch $@

# Delta (and GraphFrames where Maven Central serves it) into jvm/jars, once, at setup time.
$(JARS_STAMP): jvm/pom.xml jvm/fetch_jars.py $(SETUP_STAMP)
	$(PY) jvm/fetch_jars.py
	touch $@

jars: $(JARS_STAMP)

# Headless Chromium for the run-report test (Debian's package); installed only when missing.
browser:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null || { echo "install chromium (/usr/bin/chromium) for the report test" >&2; exit 1; }; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

test: setup browser
	$(PY) -m pytest

demo: setup
	$(VENV)/bin/botwatch demo

bench: setup
	$(PY) bench/session_start.py

lint: setup
	$(VENV)/bin/ruff check lib jobs tests bench airflow_dags
	$(VENV)/bin/mypy lib/botwatch

clean:
	rm -rf $(VENV) jvm/jars warehouse
