# kdrop — see README.md. `make help` lists the targets.
#
# Everything a fresh Debian machine lacks is installed by the targets that
# need it, and downloads (kernels, Kubernetes builds) are cached in
# $(KDROP_CACHE), which git ignores.

SHELL        := /bin/bash
KDROP_CACHE  ?= $(CURDIR)/.cache
KERNELS      ?= 5.10 6.1 6.12 7
# The netfilter rule tests read rules over netlink in user space: the oldest
# and the newest VM kernel bound what changed between (the host's 6.18 runs
# them in test-host too); 6.1 and 6.12 added 5 minutes to make test.
NETFILTER_KERNELS ?= 5.10 7
# Attach modes forced in one extra VM run, so kprobe and raw_tp are proven
# on a kernel where fentry and tp_btf would win.
FALLBACK_KERNEL ?= 5.10
FALLBACK_ATTACH ?= kprobe,raw_tp,sock_diag
# Left out of that run: tests of packet parsing, the default filter and the
# flow tables, code every mode's program shares (run in every other VM run
# and on the host); each hook's fallback program is still proven to count
# exactly. 3 minutes of make test.
FALLBACK_SKIP ?= ^(TestVXLANInnerTuple|TestFullFlowTableStaysRateLimited|TestUDPReceiveBufferOverflow|TestSummariesWhileTrafficRuns|TestDroppedPMTUErrorsCarryTheMTU|TestRouteDropsShown|TestPAWSInTimeWait|TestRPFilterMultiHomed|TestForeignVLANTag|TestICMPRedirectsCarryTheGateway|TestShortIPv4NoPortsMadeUp|TestIPv4HeaderTooShortNoPorts|TestIPv6LongAndTruncatedHeaders|TestICMPErrorThroughVXLANOnce|TestICMPErrorThroughBridgeOnce|TestBenignPlaceHidden)$$
CLANG        := clang-16
# The BPF object is reproducible: `make generate` on any machine, in any
# directory, builds tracer/kdrop_x86_bpfel.{o,go} byte for byte as committed
# (check-generate proves it), from this compiler and the committed
# bpf/vmlinux.h, never from the build host's kernel.
CLANG_PIN    := Debian clang version 16.0.6 (15~deb12u1)
# bpf/vmlinux.h comes from the BTF of this Debian kernel (`make vmlinux-h`),
# fetched as the VM kernels are. Kernels differ at run time through CO-RE
# and probes, not through this header.
VMLINUX_KERNEL  := 6.12
VMLINUX_RELEASE := 6.12.118+deb13-amd64
VMLINUX_DEBIAN  := 6.12.118-1
BPF_OUTPUTS  := tracer/kdrop_x86_bpfel.o tracer/kdrop_x86_bpfel.go
GO           ?= go
VERSION      ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
# Debian packages, by what needs them. Building and running kdrop needs only
# Go (the BPF object and its bindings are committed); each test target
# installs what it uses, and nothing else does (setup_test.go checks it).
PKGS_GENERATE := clang-16 llvm-16 libbpf-dev
PKGS_HOST     := iproute2 iptables nftables bpftool kmod util-linux
PKGS_VM       := $(PKGS_HOST) qemu-system-x86 busybox-static cpio zstd xz-utils
PKGS_K8S      := $(PKGS_HOST) etcd-server prometheus chromium ipset
PKGS_CLUSTER  := $(PKGS_HOST) containerd runc containernetworking-plugins conntrack ipset
APT_PACKAGES  := $(sort $(PKGS_GENERATE) $(PKGS_VM) $(PKGS_K8S) $(PKGS_CLUSTER))

# $(call apt_need,PACKAGES): install those of PACKAGES that are missing.
define apt_need
@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

.PHONY: help deps deps-generate deps-host deps-vm deps-k8s deps-cluster tracefs check-clang generate check-generate monitoring check-monitoring vmlinux-h build install run check test test-fuzz fuzz test-host test-kernels test-k8s bench kube-bins kube-router kernels helm image clean \
        cluster-images cluster-up cluster-down test-cluster

help: ## show this help
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

deps: ## install every Debian package any target uses (root); each target installs its own anyway
	$(call apt_need,$(APT_PACKAGES))

deps-generate:
	$(call apt_need,$(PKGS_GENERATE))
deps-host: tracefs
	$(call apt_need,$(PKGS_HOST))
deps-vm:
	$(call apt_need,$(PKGS_VM))
deps-k8s: tracefs
	$(call apt_need,$(PKGS_K8S))
deps-cluster: tracefs
	$(call apt_need,$(PKGS_CLUSTER))

tracefs:
	@mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true

check-clang: deps-generate
	@v=$$($(CLANG) --version 2>/dev/null | head -n1); \
	if [ "$$v" != "$(CLANG_PIN)" ]; then \
		echo "$(CLANG) is '$${v:-missing}', but the BPF object is pinned to '$(CLANG_PIN)' (Debian 12's clang-16): another compiler builds other bytes." >&2; \
		exit 1; \
	fi

generate: check-clang ## rebuild the BPF object and its Go bindings (bpf2go) with the pinned clang and the committed bpf/vmlinux.h
	cd tracer && $(GO) generate ./...

# Regenerates in a scratch copy (another directory, so absolute paths would
# show) and compares with the tree, which it leaves alone.
check-generate: check-clang ## fail unless make generate reproduces the committed BPF object and bindings byte for byte
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	mkdir -p "$$tmp/tracer" && cp -r go.mod go.sum bpf "$$tmp/" && cp tracer/gen.go "$$tmp/tracer/" && \
	(cd "$$tmp/tracer" && $(GO) generate ./...) || { echo "check-generate: make generate failed" >&2; exit 1; }; \
	bad=""; for f in $(BPF_OUTPUTS); do cmp -s "$$f" "$$tmp/$$f" || bad="$$bad $$f"; done; \
	if [ -n "$$bad" ]; then \
		echo "check-generate: make generate builds other bytes than are committed for$$bad: run make generate and commit the result." >&2; \
		exit 1; \
	fi; \
	echo "check-generate: $(BPF_OUTPUTS) are reproduced byte for byte"

# kdrop's alerts (a Prometheus rules file, a PrometheusRule) and Grafana
# dashboard are written from Go (deploy/monitoring) into deploy/, the
# kustomize components and the chart's files/.
monitoring: ## write the alerts, PrometheusRule and Grafana dashboard (and their ConfigMaps) from deploy/monitoring
	$(GO) run ./deploy/monitoring/gen

check-monitoring: ## fail unless make monitoring reproduces the committed alerts and dashboard files
	$(GO) run ./deploy/monitoring/gen -check

vmlinux-h: deps-generate deps-vm ## regenerate bpf/vmlinux.h from the BTF of the pinned Debian kernel (VMLINUX_RELEASE), fetched like the VM kernels
	tracer/vmtest/fetch-kernels.sh $(KDROP_CACHE) $(VMLINUX_KERNEL)
	bpf/vmlinux-h.sh $(KDROP_CACHE)/kernels/$(VMLINUX_KERNEL) $(VMLINUX_RELEASE) $(VMLINUX_DEBIAN) > bpf/vmlinux.h.tmp \
		|| { rm -f bpf/vmlinux.h.tmp; exit 1; }
	mv bpf/vmlinux.h.tmp bpf/vmlinux.h

build: ## build bin/kdrop
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o bin/kdrop ./cmd/kdrop

PREFIX ?= /usr/local
install: build ## install kdrop, and kubectl-kdrop for "kubectl kdrop tail", into $(PREFIX)/bin
	install -D -m 0755 bin/kdrop $(DESTDIR)$(PREFIX)/bin/kdrop
	ln -sf kdrop $(DESTDIR)$(PREFIX)/bin/kubectl-kdrop

run: tracefs build ## run `kdrop watch` on this machine (needs root)
	./bin/kdrop watch

check: tracefs build ## print what this kernel supports
	./bin/kdrop check

test: check-generate check-monitoring test-fuzz test-host test-kernels test-k8s test-cluster ## all tests: the BPF object reproduced, host kernel, VM kernels, Kubernetes API, a real cluster (what CI runs)

test-host: deps-host ## tracer and netfilter-rule tests on this machine's kernel, and the setup's, with the race detector
	$(GO) vet ./...
	# one package at a time (-p 1): the tracer's and the rule tests' traffic
	# and the race detector on a 2-core machine at once starved the rule
	# tests' reads past their deadlines (3 failures in one run, none alone)
	$(GO) test -race -count=1 -p 1 ./tracer/... ./cmd/kdrop/enrich/netfilter/ ./cmd/kdrop/enrich/conntrack/ ./setup/

# Go fuzz targets of everything that parses input: package:target.
FUZZ_TARGETS := ./cmd/kdrop/line:FuzzDecode ./cmd/kdrop/sinks/recording:FuzzScan ./cmd/kdrop/sinks/report:FuzzReport \
                ./cmd/kdrop/enrich:FuzzFilterFromQuery ./cmd/kdrop/enrich:FuzzFilterTrace ./tracer:FuzzParseNsfsMounts ./tracer:FuzzParseKallsyms
FUZZTIME     ?= 10s

test-fuzz: deps-host ## each fuzz target for FUZZTIME (10s) past its seed corpus; crashes land in the package's testdata/fuzz
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "=== fuzz $${t#*:} ($${t%%:*}, $(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME) "$${t%%:*}" 2>&1 | grep -vE '^fuzz: elapsed' ; \
		test $${PIPESTATUS[0]} -eq 0; \
	done

fuzz: ## the fuzz targets for as long as asked: make fuzz FUZZTIME=10m
	$(MAKE) test-fuzz FUZZTIME=$(FUZZTIME)

kernels: deps-vm ## fetch and prepare the VM kernels (KERNELS="5.10 6.1 6.12 7")
	tracer/vmtest/fetch-kernels.sh $(KDROP_CACHE) $(KERNELS)

test-kernels: kernels ## the tracer tests inside QEMU VMs, one per kernel (KERNELS="6.1"), the netfilter-rule tests on NETFILTER_KERNELS
	$(GO) test -c -o $(KDROP_CACHE)/tracer.test ./tracer/
	$(GO) test -c -o $(KDROP_CACHE)/netfilter.test ./cmd/kdrop/enrich/netfilter/
	@set -e; for k in $(KERNELS); do \
		echo "=== kernel $$k"; \
		tracer/vmtest/run.sh $(KDROP_CACHE) $$k -- $(KDROP_CACHE)/tracer.test -test.count=1 -test.v 2>&1 \
			| tee $(KDROP_CACHE)/kernel-$$k.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok)|hook |scenario_test' ; \
		test $${PIPESTATUS[0]} -eq 0 || { echo "FAIL on kernel $$k: full log in $(KDROP_CACHE)/kernel-$$k.log"; exit 1; }; \
		case " $(NETFILTER_KERNELS) " in *" $$k "*) ;; *) continue ;; esac; \
		echo "=== kernel $$k, netfilter rules"; \
		tracer/vmtest/run.sh $(KDROP_CACHE) $$k -- $(KDROP_CACHE)/netfilter.test -test.count=1 -test.v 2>&1 \
			| tee $(KDROP_CACHE)/kernel-$$k-netfilter.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok)|_test.go' ; \
		test $${PIPESTATUS[0]} -eq 0 || { echo "FAIL on kernel $$k: full log in $(KDROP_CACHE)/kernel-$$k-netfilter.log"; exit 1; }; \
	done
	@if echo " $(KERNELS) " | grep -q " $(FALLBACK_KERNEL) "; then \
		echo "=== kernel $(FALLBACK_KERNEL), attach modes forced to $(FALLBACK_ATTACH)"; \
		tracer/vmtest/run.sh $(KDROP_CACHE) $(FALLBACK_KERNEL) KDROP_TEST_ATTACH=$(FALLBACK_ATTACH) -- $(KDROP_CACHE)/tracer.test -test.count=1 -test.skip '$(FALLBACK_SKIP)' -test.v 2>&1 \
			| tee $(KDROP_CACHE)/kernel-$(FALLBACK_KERNEL)-fallback.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok)|hook |scenario_test'; \
		test $${PIPESTATUS[0]} -eq 0 || { echo "FAIL with forced modes: log in $(KDROP_CACHE)/kernel-$(FALLBACK_KERNEL)-fallback.log"; exit 1; }; \
	fi

kube-bins: ## build kube-apiserver, kubectl & co. from the Go module proxy (cached)
	deploy/kube/build.sh $(KDROP_CACHE)/kube/bin

# kube-router is the test cluster's NetworkPolicy engine (its firewall
# controller alone, started by `deploy/cluster/cluster.sh kube-router start`
# for the tests that need one): a TEST FIXTURE ONLY. The only version the module proxy serves has reported security
# flaws; it runs inside the local test cluster alone and is never shipped,
# deployed by deploy/, or suggested to users. Built once per version into
# the cache (~4 min, ~60 MB); kube-router has no replace directives, so its
# go.sum and the checksum database pin what is built.
KUBE_ROUTER_VERSION := v2.1.0
KUBE_ROUTER         := $(KDROP_CACHE)/kube-router/$(KUBE_ROUTER_VERSION)/kube-router
kube-router: $(KUBE_ROUTER) ## build the test cluster's NetworkPolicy engine (kube-router, a test fixture only) from the Go module proxy (cached)
$(KUBE_ROUTER):
	cd / && GOBIN=$(@D) GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0 $(GO) install -trimpath \
		-ldflags "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$(KUBE_ROUTER_VERSION)" \
		github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$(KUBE_ROUTER_VERSION)

# A real single-node cluster (containerd, kubelet, kube-proxy, ...; on
# demand kube-router's firewall) on this machine for end-to-end tests;
# deploy/cluster/README.md says what it changes.
CLUSTER_ENV := KDROP_CLUSTER_HOME=$(KDROP_CACHE)/cluster KDROP_KUBE_BIN=$(KDROP_CACHE)/kube/bin KDROP_KUBE_ROUTER=$(KUBE_ROUTER) GO=$(GO)

cluster-images: ## build the test cluster's pause and busybox images into .cache/cluster/images
	$(CLUSTER_ENV) deploy/cluster/cluster.sh images

cluster-up: deps-cluster kube-bins cluster-images ## start a real single-node Kubernetes cluster here (root); then `deploy/cluster/cluster.sh env`
	$(CLUSTER_ENV) deploy/cluster/cluster.sh up

cluster-down: ## stop the test cluster and undo its changes to the host
	$(CLUSTER_ENV) deploy/cluster/cluster.sh down

test-cluster: deps-cluster kube-bins kube-router helm cluster-images ## kdrop deployed from deploy/ in a real local cluster, diagnosing the incidents end to end (brings the cluster up and down)
	$(CLUSTER_ENV) KDROP_HELM=$(KDROP_CACHE)/bin/helm $(GO) test -count=1 -v -timeout 30m ./deploy/e2e/ 2>&1 \
		| tee $(KDROP_CACHE)/e2e.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok)|KDROP-E2E|_test.go'; \
		test $${PIPESTATUS[0]} -eq 0 || { echo "FAIL: full log in $(KDROP_CACHE)/e2e.log"; exit 1; }

helm: ## build a pinned helm from the Go module proxy into the cache (for the chart's tests)
	deploy/helm/install-helm.sh $(KDROP_CACHE)/bin

test-k8s: deps-k8s kube-bins kube-router helm ## identity, CLI, agent and deploy/ tests against a real kube-apiserver + etcd (and kube-router's firewall), with the race detector
	KDROP_KUBE_BIN=$(KDROP_CACHE)/kube/bin KDROP_KUBE_ROUTER=$(KUBE_ROUTER) KDROP_HELM=$(KDROP_CACHE)/bin/helm \
		$(GO) test -race -count=1 -timeout 30m $$($(GO) list ./k8s/... ./cmd/... ./deploy/ ./deploy/monitoring/... ./deploy/cluster/... | grep -v '/enrich/netfilter$$')
	# the rule tests ran in test-host, alone (-p 1); here only those that need
	# kube-proxy or kube-router: beside the other packages' load under -race,
	# the rest starved ("too many drops waiting")
	KDROP_KUBE_BIN=$(KDROP_CACHE)/kube/bin KDROP_KUBE_ROUTER=$(KUBE_ROUTER) \
		$(GO) test -race -count=1 -timeout 10m -run 'TestKubeProxyMeaning|TestKubeRouterMeaning' ./cmd/kdrop/enrich/netfilter/

# The tag deploy/ names, so `kubectl apply -k deploy/kustomize` runs this
# build once the tarball is imported; the version label says which build.
IMAGE_TAG ?= v0.1.0
image: build ## build the agent's OCI image kdrop:$(IMAGE_TAG) as a tarball (out/kdrop-image.tar), no Docker or registry needed
	$(GO) run ./cmd/mkimage -binary bin/kdrop -tag kdrop:$(IMAGE_TAG) -version $(VERSION) -out out/kdrop-image.tar

BENCH_KERNEL ?= 6.12
SOAK         ?= 30m
# `make bench SOAK=2m` for a short agent soak
bench: deps-k8s kernels kube-bins ## benchmarks: BPF cost per run vs empty programs (host + a VM for fentry/kprobe), drop rate without loss, decode+encode, naming netfilter rules under a 10k/s storm
	$(GO) test -run '^$$' -bench . -benchtime 20000x -count 1 ./tracer/ | grep -E 'BPFCOST|^Benchmark|^ok'
	$(GO) test -run '^$$' -bench DecodeEncode -benchtime 2s -count 1 ./tracer/ | grep -E '^Benchmark'
	$(GO) test -run '^$$' -bench WatchDropRate -benchtime 1x -count 1 ./cmd/kdrop/ | grep -E 'DROPRATE|^Benchmark'
	$(call apt_need,bpftrace)
	$(GO) test -run '^$$' -bench DropStorm -benchtime 1x -count 1 -timeout 20m ./cmd/kdrop/ | grep -E 'STORM|^Benchmark|FAIL|storm_bench'
	$(GO) test -run '^$$' -bench 'RuleStorm|Read500' -benchtime 1x -count 1 -timeout 10m ./cmd/kdrop/enrich/netfilter/ | grep -E 'RULESTORM|^Benchmark|FAIL|bench_test'
	KDROP_KUBE_BIN=$(KDROP_CACHE)/kube/bin KDROP_SOAK=$(SOAK) $(GO) test -run '^$$' -bench AgentSoak -benchtime 1x -count 1 -timeout 90m ./cmd/kdrop/ | grep -E 'SOAK|^Benchmark|FAIL|soak_bench'
	KDROP_KUBE_BIN=$(KDROP_CACHE)/kube/bin $(GO) test -run '^$$' -bench 'LookupIP|LookupNetns|Cluster10k' -benchmem -timeout 30m ./k8s/ | grep -E '^Benchmark|KDROP-SCALE'
	$(GO) test -c -o $(KDROP_CACHE)/tracer.test ./tracer/
	@for attach in fentry kprobe; do \
		echo "=== kernel $(BENCH_KERNEL), attach $$attach (under emulation: only the ratios mean anything)"; \
		tracer/vmtest/run.sh $(KDROP_CACHE) $(BENCH_KERNEL) KDROP_TEST_ATTACH=$$attach -- $(KDROP_CACHE)/tracer.test \
			-test.run '^$$' -test.bench 'TcpConnRequest' -test.benchtime 20000x 2>&1 | grep -E 'BPFCOST|FAIL'; \
	done

clean: ## remove build outputs (keeps the download cache)
	rm -rf bin $(KDROP_CACHE)/tracer.test
