# make          the main job: install, run every chapter (smoke profile, built-in phantoms), build the book
# make test     install, then pytest (library, notebooks through nbval, book build): what CI runs
# make reference [BUDGET=140m]  the cpu profile on ../shared/data into book/reference/, step by step into
#               book/reference/store/ (committed); with BUDGET it stops in time and exits 3 while more is left
# make status   steps stored, stale and missing per chapter of book/reference, and the plan's time left
# make plan     what `make reference` will cost on this machine, per chapter, before running it
# make chapter NB=01 [DATASET="spec ..."] [PROFILE=cpu] [PARAMS="epochs=3 seed=1"]
#               one chapter notebook with papermill into $(RUNS)/<profile>/<notebook>/
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared/data
PROFILE ?= smoke
RUNS ?= runs

.PHONY: all env run book test reference status plan chapter clean
REAL_DATA := --dataset $(SHARED)/chest_xray --dataset $(SHARED)/ct --dataset $(SHARED)/histology \
	--param '01.dataset=[$(SHARED)/chest_xray, $(SHARED)/ct, $(SHARED)/histology, $(SHARED)/medmnist/pneumoniamnist_28.npz]' \
	--param 05.extended_dataset=chest_xray
all: book

env: $(VENV)/.installed
$(VENV)/.installed: requirements.txt pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV)
	touch $@

run: env
	$(PY) scripts/compendium.py run --profile smoke --out runs/smoke

book: run
	$(PY) scripts/compendium.py book --run runs/smoke --out _build/smoke
	@echo "open _build/smoke/_build/html/index.html"

test: env
	OMP_NUM_THREADS=1 $(PY) -m pytest --nbval-lax -n 2 --dist loadfile tests notebooks --durations=30

reference: env
	@rc=0; $(PY) scripts/compendium.py run --profile cpu --out book/reference $(REAL_DATA) \
	  $(if $(BUDGET),--stop-after $(BUDGET)) || rc=$$?; \
	if [ $$rc -eq 3 ]; then echo "make reference: more to do; commit book/reference/store, then run it again"; fi; \
	[ $$rc -eq 0 ] || exit $$rc
	$(PY) scripts/compendium.py book --out _build/reference --strict

status: env
	$(PY) scripts/compendium.py status --out book/reference

plan: env
	$(PY) scripts/compendium.py plan --profile cpu $(REAL_DATA)

chapter: env
	$(if $(NB),,$(error say which chapter: make chapter NB=01 [DATASET=spec] [PROFILE=cpu] [PARAMS="epochs=3"]))
	$(PY) scripts/compendium.py run --chapter $(NB) --profile $(PROFILE) --out $(RUNS)/$(PROFILE) \
	  $(foreach spec,$(DATASET),--dataset '$(spec)') $(foreach param,$(PARAMS),--param '$(param)')

clean:
	rm -rf runs _build
