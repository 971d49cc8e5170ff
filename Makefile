# Set-up and everyday commands. Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast lint bench all-data weights reverse-fold weights-report gpu-weights \
	gpu-kit bodies-s0009-data clean

# make demo installs the runtime alone (what the CPU container holds, and Pillow for its picture:
# about 660 MB); the other targets the development set (torch, onnx, pytest, ...: about 1.9 GB).
$(VENV)/runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[report,openvino]'
	touch $@

$(VENV)/installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The main job on the bundled CT with the shipped weights (weights/MODEL_CARD.md), scored
# against the bundled reference labels (TotalSegmentator's, converted to FLARE ids).
DEMO := build/demo
demo: $(VENV)/runtime
	mkdir -p $(DEMO)/inputs && cp data/totalsegmentator/example_ct.nii.gz $(DEMO)/inputs/sample_0000.nii.gz
	$(PY) -m inference -i $(DEMO)/inputs -o $(DEMO)/outputs --weights weights --timings $(DEMO)/timings.jsonl
	$(PY) -m inference.report $(DEMO)/outputs/sample.nii.gz --ct $(DEMO)/inputs/sample_0000.nii.gz \
	    --png $(DEMO)/sample.png --reference data/totalsegmentator/example_seg.nii.gz --totalsegmentator
	@echo "Your own CTs: $(PY) -m inference -i FOLDER -o OUTPUT_FOLDER (README: Segment your own CT)"

test: $(VENV)/installed lint
	$(PY) -m pytest

# Everything but the tests marked slow (the shipped weights on the real CT, paper-size networks,
# repeated exports, the container): a few minutes; CI runs `make test`.
test-fast: $(VENV)/installed lint
	$(PY) -m pytest -m "not slow"

lint: $(VENV)/installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(VENV)/installed
	$(PY) benchmarks/networks.py
	$(PY) benchmarks/stage_graphs.py

# Weights from the real CTs we can reach (python -m training.totalsegmentator): about two hours
# on two CPU cores (the two stages train side by side on patches, one core each; minutes on a
# GPU), then 40 minutes of the fine stage on whole cubes, then 16 CTs synthesised from patient
# A's label map and 20 minutes of the coarse stage on whole cubes, its dead liver channel
# revived first (docs/training.md). That is the recipe of the leave-one-patient-out fold
# (patient B held out), exported to $(FOLD); its last step trains both stages on whole cubes of
# every patient, A and B (about 40 minutes, the stages side by side), into weights/.
# Every step resumes, so running it again goes on where the last run stopped.
TS := build/ts_dataset
ALL := build/all_dataset
FOLD := build/fold_weights
STAGE_THREADS ?= $(shell expr \( $$(nproc) + 1 \) / 2)
# $(call both_stages,SUFFIX): training/configs/totalsegmentator_{coarse,fine}SUFFIX.toml side by
# side, one share of the cores each; fails if either fails.
both_stages = pids=; for stage in coarse fine; do \
	    OMP_NUM_THREADS=$(STAGE_THREADS) $(PY) -m training --resume \
	        --config training/configs/totalsegmentator_$${stage}$(1).toml & pids="$$pids $$!"; \
	done; \
	failed=0; for pid in $$pids; do wait $$pid || failed=1; done; exit $$failed
# Every labelled case in one dataset and cache: patients A and B and 16 CTs synthesised from
# patient A's label map. The last step of `weights` trains on all of it; `reverse-fold` on all
# but patient A.
all-data: $(VENV)/installed
	$(PY) -m training.totalsegmentator --out $(ALL) --held-out none
	$(PY) -m training.synth --labels data/totalsegmentator/example_seg.nii.gz --out $(ALL) --count 16 --seed 0
	$(PY) -m training.prepare --dataset $(ALL) --out build/all_cache --coarse-crops 8 --fine-crops 8

weights: all-data
	$(PY) -m training.totalsegmentator --out $(TS)
	$(PY) -m training.prepare --dataset $(TS) --out build/ts_cache --coarse-crops 12 --fine-crops 12
	$(call both_stages,)
	$(PY) -m training --resume --config training/configs/totalsegmentator_fine_cubes.toml
	$(PY) -m training.totalsegmentator --out build/synth_dataset
	$(PY) -m training.synth --labels data/totalsegmentator/example_seg.nii.gz --out build/synth_dataset --count 16 --seed 0
	$(PY) -m training.prepare --dataset build/synth_dataset --out build/synth_cache --coarse-crops 8 --fine-crops 8
	$(PY) -m training --resume --config training/configs/totalsegmentator_coarse_cubes.toml
	$(PY) -m export --checkpoint build/ts_cubes/coarse/last.pt build/ts_cubes/fine/last.pt --out $(FOLD)
	$(call both_stages,_all)
	$(PY) -m export --checkpoint build/ts_all/coarse/last.pt build/ts_all/fine/last.pt --out weights

# The other leave-one-patient-out fold: patient A's CT held out, trained on patient B and the
# synthetic CTs (painted from patient A's label map: A's anatomy is not held out), 1600 patch
# iterations of each stage side by side and 60 on whole cubes (about two and a half hours on two
# cores), into $(REVERSE); `weights-report` then scores it on patient A.
REVERSE := build/reverse_weights
reverse-fold: all-data
	$(call both_stages,_reverse)
	$(call both_stages,_reverse_cubes)
	$(PY) -m export --checkpoint build/reverse_cubes/coarse/last.pt build/reverse_cubes/fine/last.pt \
	    --out $(REVERSE)

# The first fold that holds a whole body out: s0009 of data/ts_dataset (its real CT and its map)
# held out; trained on patients A and B (real) and CTs painted by training.synth from the maps of
# patient A (8) and of s0001, s0004, s0006, s0327, s0328 (4 each). The fine stage:
# training/configs/bodies_fine_s0009_out.toml (1600 iterations, about 1.5 hours on one core).
BODIES := build/bodies_s0009
PAINTED_MAPS := s0001 s0004 s0006 s0327 s0328
bodies-s0009-data: $(VENV)/installed
	$(PY) -m training.totalsegmentator --out $(BODIES) --held-out none --test-subject s0009
	$(PY) -m training.synth --labels data/totalsegmentator/example_seg.nii.gz --out $(BODIES) \
	    --count 8 --seed 0 --prefix synthA
	for s in $(PAINTED_MAPS); do $(PY) -m training.synth --labels data/ts_dataset/labels/$$s.nii.gz \
	    --out $(BODIES) --count 4 --seed 0 --prefix synth_$$s || exit 1; done
	$(PY) -m training.prepare --dataset $(BODIES) --out $(BODIES)_cache --coarse-crops 2 \
	    --fine-crops 8 --stages fine

# The fp16 graphs the GPU image runs, derived from the fp32 graphs git stores (byte-identical
# to an export from the training checkpoints; it says so against manifest.json). Before
# `docker build` of the GPU image.
gpu-weights: $(VENV)/installed
	$(PY) -m export --derive weights --precision fp16

# What a lent GPU machine lacks for benchmarks/gpu_check.py (onnxruntime-gpu, SimpleITK, cc3d
# for its Python 3.12), in parts that each fit one call: docs/measuring.md has the sequence.
gpu-kit: $(VENV)/installed
	$(PY) benchmarks/gpu_check.py --make-kit build/gpu-kit

# DSC and NSD of WEIGHTS on the real patients of DATA (trained on, and held out if any: a DICOM
# series), of the fold's weights FOLD on the patient held out of $(TS) (B), and of the reverse
# fold's $(REVERSE) on patient A where `make reverse-fold` made them, written into
# WEIGHTS/MODEL_CARD.md, with 4 synthetic CTs of seeds no training drew ($(UNSEEN)); the
# synthetic training cases are not scored. FOLD= or UNSEEN= leaves that part out;
# PREVIOUS=per_case.csv adds the scores of the weights these replace.
WEIGHTS ?= weights
DATA ?= $(ALL)
UNSEEN ?= build/synth_heldout
REAL := build/ts_eval/real
FOLDS := build/ts_eval/folds
# Tested on the inputs: make expands a recipe's lines before it runs the first one.
REVERSE_MADE = $(wildcard $(REVERSE)/*.onnx)
weights-report: $(VENV)/installed
	rm -rf build/ts_eval && mkdir -p $(REAL)/images $(REAL)/labels
	cp $(DATA)/imagesTr/patient*_0000.nii.gz $(REAL)/images/ && cp $(DATA)/labelsTr/patient*.nii.gz $(REAL)/labels/
	$(PY) -m inference -i $(REAL)/images -o build/ts_eval/pred --weights $(WEIGHTS)
	$(PY) benchmarks/evaluate.py --pred build/ts_eval/pred --gt $(REAL)/labels --out build/ts_eval/training
	$(if $(wildcard $(DATA)/imagesTs/*),$(PY) -m inference -i $(DATA)/imagesTs -o build/ts_eval/pred --weights $(WEIGHTS))
	$(if $(wildcard $(DATA)/imagesTs/*),$(PY) benchmarks/evaluate.py --pred build/ts_eval/pred --gt $(DATA)/labelsTs --out build/ts_eval/held_out)
	mkdir -p $(FOLDS) build/ts_eval/fold_images
	$(if $(FOLD),cp $(TS)/labelsTs/*.nii.gz $(FOLDS)/)
	$(if $(FOLD),$(PY) -m inference -i $(TS)/imagesTs -o build/ts_eval/fold_pred --weights $(FOLD))
	$(if $(REVERSE_MADE),cp $(ALL)/labelsTr/patientA.nii.gz $(FOLDS)/ && \
	    cp $(ALL)/imagesTr/patientA_0000.nii.gz build/ts_eval/fold_images/)
	$(if $(REVERSE_MADE),$(PY) -m inference -i build/ts_eval/fold_images -o build/ts_eval/fold_pred --weights $(REVERSE))
	$(if $(FOLD)$(REVERSE_MADE),$(PY) benchmarks/evaluate.py --pred build/ts_eval/fold_pred --gt $(FOLDS) --out build/ts_eval/fold)
	$(if $(UNSEEN),$(PY) -m training.synth --labels data/totalsegmentator/example_seg.nii.gz \
	    --out $(UNSEEN) --count 4 --seed 99 --prefix held)
	$(if $(UNSEEN),$(PY) -m inference -i $(UNSEEN)/imagesTr -o build/ts_eval/synth_pred --weights $(WEIGHTS))
	$(if $(UNSEEN),$(PY) benchmarks/evaluate.py --pred build/ts_eval/synth_pred --gt $(UNSEEN)/labelsTr --out build/ts_eval/synthetic)
	$(PY) -m export.model_card --weights $(WEIGHTS) --dataset $(DATA) --eval build/ts_eval \
	    $(if $(FOLD)$(REVERSE_MADE),--fold $(FOLDS)) $(if $(UNSEEN),--synthetic $(UNSEEN)) $(if $(PREVIOUS),--previous $(PREVIOUS))

clean:
	rm -rf $(VENV) build results
