# Everything a fresh machine needs: `make run` to use it, `make test` to check it.
VENV   := .venv
PY     := $(VENV)/bin/python
JLPM   := $(VENV)/bin/jlpm
PORT   ?= 8888
STAMP  := $(VENV)/.installed
# configurable-http-proxy (npm) for the JupyterHub tests, project-local; tests/hub.py finds it there.
CHP       := $(VENV)/chp/node_modules/.bin/configurable-http-proxy
CHP_STAMP := $(VENV)/chp/.installed

.PHONY: install run lint test test-python test-jupyter-ai test-frontend test-ui chromium agent-clis demo-model clean

install: $(STAMP) $(CHP_STAMP)

# pip builds the labextension from labextension/ (hatch-jupyter-builder runs jlpm) into the package.
$(STAMP): pyproject.toml labextension/package.json labextension/yarn.lock $(shell find labextension/src labextension/style labextension/schema -type f)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,all]"
	touch $@

$(CHP_STAMP):
	npm install --prefix $(VENV)/chp --no-audit --no-fund --loglevel=error configurable-http-proxy@5
	$(CHP) --version
	touch $@

run: $(STAMP)
	$(VENV)/bin/jupyter mlx-manager demo-model --all-kinds --if-missing
	@echo "Starting JupyterLab with jupyter-mlx-manager on http://127.0.0.1:$(PORT)/lab"
	$(VENV)/bin/jupyter lab --no-browser --ServerApp.allow_root=True --ServerApp.ip=127.0.0.1 --ServerApp.port=$(PORT)

# Python: ruff (rules and formatting in pyproject.toml).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	cd labextension && export PATH="$(CURDIR)/$(VENV)/bin:$$PATH" && jlpm install --immutable && jlpm lint:check && jlpm check:openapi

test: install chromium agent-clis lint test-python test-jupyter-ai test-frontend test-ui

# The agents' own CLIs (Claude Code, Codex, opencode) from npm, project-local, for tests/test_agents_cli.py.
# npm 11 leaves packages' install scripts to be approved: run the two that place the native binaries.
AGENT_CLIS := build/agents
agent-clis: $(AGENT_CLIS)/node_modules/.bin/opencode

$(AGENT_CLIS)/node_modules/.bin/opencode:
	npm install --prefix $(AGENT_CLIS) --no-audit --no-fund --loglevel=error @anthropic-ai/claude-code @openai/codex opencode-ai
	cd $(AGENT_CLIS)/node_modules/@anthropic-ai/claude-code && node install.cjs
	cd $(AGENT_CLIS)/node_modules/opencode-ai && node postinstall.mjs

test-python: install
	$(PY) -m pytest -q -m "not ui" -n 2 --dist loadfile tests

# jupyter-ai (Jupyternaut) in an overlay venv over .venv: its 11 server extensions would slow every
# other test server's start, and it pins httpx below what the main venv has.
JAI_VENV := .venv-jupyter-ai
JAI_STAMP := $(JAI_VENV)/.installed
$(JAI_STAMP): $(STAMP)
	test -x $(JAI_VENV)/bin/python || python3 -m venv $(JAI_VENV)
	echo "import site; site.addsitedir('$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')')" \
		> "$$($(JAI_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz_main_venv.pth"
	$(JAI_VENV)/bin/python -m pip install --quiet "jupyter-ai[jupyternaut]>=3.2,<4"
	touch $@

test-jupyter-ai: $(JAI_STAMP)
	LITELLM_LOCAL_MODEL_COST_MAP=True $(JAI_VENV)/bin/python -m pytest -q tests/test_jupyter_ai.py

test-frontend: install
	cd labextension && ../$(JLPM) install --immutable && ../$(JLPM) test

test-ui: install chromium
	$(PY) -m pytest -q -m ui tests/ui

# Browser tests use Debian's Chromium; nothing downloads a browser of its own.
chromium:
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

clean:
	rm -rf $(VENV) $(JAI_VENV) jupyter_mlx_manager/labextension labextension/node_modules labextension/lib labextension/tsconfig.tsbuildinfo
