# focal_rpn: `make demo` (train + evaluate on the embedded trees photographs, CPU) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.focal_rpn-installed
DEMO_OUT ?= output/demo
# Extra flags for `python -m venv`, e.g. VENV_ARGS=--system-site-packages to reuse a detectron2
# source build installed in the base interpreter.
VENV_ARGS ?=

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml scripts/setup_venv.sh
	bash scripts/setup_venv.sh $(VENV) $(VENV_ARGS)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) train_net.py --config-file configs/trees/retinanet.yaml OUTPUT_DIR $(DEMO_OUT)
	$(PY) -m focal_rpn.tools.visualize --config-file configs/trees/retinanet.yaml --dataset trees_val --eval-view \
		--output $(DEMO_OUT)/predictions MODEL.WEIGHTS $(DEMO_OUT)/model_final.pth

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf output
