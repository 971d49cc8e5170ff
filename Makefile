# Set-up and everyday commands. Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench weights weights-report clean

$(VENV)/installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The main job on the bundled CT. Until trained weights ship, with random paper-size graphs.
DEMO := build/demo
demo: $(VENV)/installed
	$(PY) -m training.networks
	test -f build/weights/fine_fp32.onnx || $(PY) -m export --init random --seed 0 --out build/weights
	mkdir -p $(DEMO)/inputs && cp data/totalsegmentator/example_ct.nii.gz $(DEMO)/inputs/sample_0000.nii.gz
	$(PY) -m inference -i $(DEMO)/inputs -o $(DEMO)/outputs --weights build/weights --timings $(DEMO)/timings.jsonl -v
	cat $(DEMO)/timings.jsonl
	$(PY) -m inference.report $(DEMO)/outputs/sample.nii.gz --ct $(DEMO)/inputs/sample_0000.nii.gz --png $(DEMO)/sample.png

test: $(VENV)/installed lint
	$(PY) -m pytest

lint: $(VENV)/installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(VENV)/installed
	$(PY) benchmarks/networks.py
	$(PY) benchmarks/stage_graphs.py

# Weights from the real CTs we can reach (python -m training.totalsegmentator): hours of CPU.
# Every step resumes, so running it again goes on where the last run stopped.
TS := build/ts_dataset
weights: $(VENV)/installed
	$(PY) -m training.totalsegmentator --out $(TS)
	$(PY) -m training.prepare --dataset $(TS) --out build/ts_cache --coarse-crops 12 --fine-crops 12
	$(PY) -m training --config training/configs/totalsegmentator_coarse.toml --resume
	$(PY) -m training --config training/configs/totalsegmentator_fine.toml --resume
	$(PY) -m export --checkpoint build/ts_train/coarse/last.pt build/ts_train/fine/last.pt --out weights

# DSC and NSD of WEIGHTS on the training patient and on the held-out one (a DICOM series).
WEIGHTS ?= weights
weights-report: $(VENV)/installed
	$(PY) -m inference -i $(TS)/imagesTr -o build/ts_eval/pred --weights $(WEIGHTS)
	$(PY) -m inference -i $(TS)/imagesTs -o build/ts_eval/pred --weights $(WEIGHTS)
	$(PY) benchmarks/evaluate.py --pred build/ts_eval/pred --gt $(TS)/labelsTr --out build/ts_eval/training
	$(PY) benchmarks/evaluate.py --pred build/ts_eval/pred --gt $(TS)/labelsTs --out build/ts_eval/held_out

clean:
	rm -rf $(VENV) build results
