# vtepd. The two commands that matter:
#   make demo   a lab of vtepd hosts on this machine, misses answered live (root);
#               DOCKER=1: each host with a real dockerd, containers by docker run
#   make test   every test: unit tests, then the netns lab tests (root)
#   make bench  benchmarks against the targets; writes BENCHMARKS.md (root)
#   make fuzz   each fuzz target for FUZZTIME (default 30s), one after another;
#               fails if any finds a crasher, which go saves under the package's
#               testdata/fuzz/<target>/ (commit it with the fix: `make test` runs
#               every seed there). E.g. `make fuzz FUZZTIME=5m FUZZ=Lease`.

GO      ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
PREFIX  ?= /usr/local

# Every package but the lab's, with the race detector: listed by go list,
# so that a new package's tests run without anyone adding it here. Some
# (firewall, monitor) make network namespaces of their own as root, and
# skip otherwise.
UNIT_PKGS = $(shell $(GO) list ./... | grep -v /test/netns)
# The lab tests (test/netns): namespaces with real race-built vtepds, etcd
# and kernel. Each lab test runs beside others, LAB_PARALLEL at a time; the
# few that need the kernel's one neighbour table to themselves run first,
# alone (see test/netns/main_test.go).
LAB_PKGS := ./test/netns/...
LAB_PARALLEL ?= 8
# Unit tests mostly wait on an embedded etcd: more of them at once than the
# default (one per CPU).
UNIT_PARALLEL ?= 4
UNIT_TEST = $(GO) test -race -count=1 -json -parallel $(UNIT_PARALLEL) $(UNIT_PKGS)
LAB_TEST = $(GO) test -count=1 -json -timeout 10m -parallel $(LAB_PARALLEL) $(LAB_PKGS)
# Runs go test commands; shows the lab tests' output in full, the others'
# as go test would; lists the ten slowest tests at the end.
SUMMARY = GO="$(GO)" VERBOSE='/test/netns$$' ./scripts/test-summary.sh

.PHONY: all build deps test unit netns demo bench install clean
.PHONY: fuzz

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/vtepd ./cmd/vtepd

deps:
	@./scripts/deps.sh
	@$(GO) mod download

test: deps
	$(GO) vet ./...
	@$(SUMMARY) "$(UNIT_TEST)" "$(LAB_TEST)"

unit:
	@$(SUMMARY) "$(UNIT_TEST)"

# The netns suite alone, e.g. `make netns RUN=TestCore`.
netns: deps
	@$(SUMMARY) "$(LAB_TEST) -run '$(RUN)'"

demo: deps
	$(GO) run ./test/netns/cmd/demo $(if $(DOCKER),-docker)

# Every scenario, or some: `make bench ONLY=storm,economy`.
bench: deps
	@./scripts/deps.sh bench
	$(GO) run ./test/netns/cmd/bench $(if $(ONLY),-only $(ONLY) -out bench-partial.md,-out BENCHMARKS.md)

# The binary, the systemd unit and its docker.service drop-in, and an
# example environment file (never over an existing one). DESTDIR stages it.
SYSTEMD_DIR ?= /etc/systemd/system
install: build
	install -D -m 0755 bin/vtepd $(DESTDIR)$(PREFIX)/bin/vtepd
	sed 's|/usr/local/bin/vtepd|$(PREFIX)/bin/vtepd|' contrib/systemd/vtepd.service > vtepd.service.tmp
	install -D -m 0644 vtepd.service.tmp $(DESTDIR)$(SYSTEMD_DIR)/vtepd.service
	sed 's|/usr/local/bin/vtepd|$(PREFIX)/bin/vtepd|' contrib/systemd/docker.service.d/vtepd.conf > vtepd.conf.tmp
	install -D -m 0644 vtepd.conf.tmp $(DESTDIR)$(SYSTEMD_DIR)/docker.service.d/vtepd.conf
	rm -f vtepd.service.tmp vtepd.conf.tmp
	test -e $(DESTDIR)/etc/default/vtepd || install -D -m 0600 contrib/systemd/vtepd.env $(DESTDIR)/etc/default/vtepd
	@echo "installed; now: edit /etc/default/vtepd, then systemctl daemon-reload && systemctl enable --now vtepd"

clean:
	rm -rf bin

# The packages with fuzz targets; each target in them is found by name.
# FUZZ keeps those whose name matches it (a grep -E pattern). One worker
# each (FUZZPARALLEL): the machines this runs on are shared.
FUZZ_PKGS    := ./store ./subnetfile ./miss ./cmd/vtepd
FUZZTIME     ?= 30s
FUZZPARALLEL ?= 1
FUZZ         ?= .
fuzz:
	@failed=; for pkg in $(FUZZ_PKGS); do \
		list=$$($(GO) test -list '^Fuzz' $$pkg) || { failed="$$failed $$pkg(build)"; continue; }; \
		for t in $$(echo "$$list" | grep '^Fuzz' | grep -E '$(FUZZ)'); do \
			echo "== $$pkg $$t for $(FUZZTIME)"; \
			$(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) -parallel $(FUZZPARALLEL) $$pkg || failed="$$failed $$pkg:$$t"; \
		done; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: failed:$$failed (the failing input is above; a new one is saved in the package's testdata/fuzz/)"; exit 1; fi
