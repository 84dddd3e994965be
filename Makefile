# Global API rate limiter for nginx: build, run, test, benchmark.
#
#   make          build the module (build/ngx_http_ratelimit_module.so)
#   make run      start two Redis shards and nginx with the demo config
#   make test     run every suite (unit, Redis scripts, nginx)
#   make bench    benchmark against plain nginx and limit_req
#   make bench-curve  the module's cost curves (shards, callers, policies,
#                 concurrency), with a plot each in bench/results/
#   make deb      build the Debian package (build/libnginx-mod-http-ratelimit_*.deb)
#   make test-valgrind  the nginx suites with nginx under valgrind memcheck

NGINX_SRC   ?= /usr/share/nginx/src
NGINX       ?= /usr/sbin/nginx
BUILD       := build
NGX_BUILD   := $(BUILD)/nginx
MODULE      := $(BUILD)/ngx_http_ratelimit_module.so

SOURCES     := config $(wildcard src/*.c src/*.h)
SCRIPTS     := $(wildcard lua/*.lua)

# Debian's own flags for its nginx, so the module matches the binary
CC_OPT      := -g -O2 -fstack-protector-strong -Wformat -Werror=format-security \
               -fPIC -Wdate-time -D_FORTIFY_SOURCE=2
LD_OPT      := -Wl,-z,relro -Wl,-z,now -fPIC

.PHONY: all module unit deps run test test-valgrind bench bench-curve deb clean

all: module unit

module: $(MODULE)

deps:
	@sh scripts/deps.sh

# NGINX_SRC may also be an nginx.org source tree (release tarball or git
# checkout), which has no conf_flags: then the only flag is --with-compat,
# enough for the module to load into any nginx of that version built
# --with-compat
$(NGX_BUILD)/objs/Makefile: config $(wildcard $(NGINX_SRC)/conf_flags)
	rm -rf $(NGX_BUILD)
	mkdir -p $(BUILD)
	cp -r $(NGINX_SRC) $(NGX_BUILD)
	cd $(NGX_BUILD) && bash -c 'NGX_CONF_FLAGS=(--with-compat); \
	    if [ -f conf_flags ]; then . ./conf_flags; fi; \
	    if [ -f configure ]; then cfg=./configure; else cfg=auto/configure; fi; \
	    $$cfg "$${NGX_CONF_FLAGS[@]}" --with-cc-opt="$(CC_OPT)" \
	    --with-ld-opt="$(LD_OPT)" --add-dynamic-module=$(CURDIR)' \
	    > configure.log || { tail -20 configure.log; exit 1; }

# the .so is replaced by a new file, never rewritten in place: a running
# nginx has the old one mapped
$(MODULE): $(NGX_BUILD)/objs/Makefile $(SOURCES) $(SCRIPTS) lua/embed.sh
	sh lua/embed.sh $(NGX_BUILD)/objs/ngx_http_ratelimit_scripts.h $(SCRIPTS)
	$(MAKE) -s -C $(NGX_BUILD) -f objs/Makefile modules
	cp $(NGX_BUILD)/objs/ngx_http_ratelimit_module.so $@.tmp && mv $@.tmp $@

unit:
	@sh t/unit/build.sh

run: deps all
	sh scripts/run-demo.sh

# t/500-deb.t builds and installs the Debian package: its tools too
test: deps all
	@sh scripts/deps.sh --deb
	sh scripts/run-tests.sh

test-valgrind: deps all
	@sh scripts/deps.sh --valgrind
	sh scripts/run-valgrind.sh

bench: all
	@sh scripts/deps.sh --bench
	sh bench/run.sh

bench-curve: all
	@sh scripts/deps.sh --bench
	sh bench/curve.sh

# The Debian package, built by dpkg-buildpackage (debian/rules runs the
# module target above) in a copy of the tree under build/deb, so that what
# it writes next to the tree (.changes, .buildinfo) stays under build/ too.
# Needs the packages of `sh scripts/deps.sh --deb`.
DEB_NAME    := libnginx-mod-http-ratelimit
DEB_VERSION := $(shell sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' debian/changelog 2>/dev/null)
DEB_ARCH    := $(shell dpkg --print-architecture 2>/dev/null)
DEB         := $(BUILD)/$(DEB_NAME)_$(DEB_VERSION)_$(DEB_ARCH).deb
DEB_TREE    := $(BUILD)/deb/$(DEB_NAME)-$(DEB_VERSION)

deb: $(DEB)

$(DEB): $(SOURCES) $(SCRIPTS) lua/embed.sh Makefile README.md \
        $(wildcard debian/* debian/*/*)
	rm -rf $(BUILD)/deb
	mkdir -p $(DEB_TREE)
	tar -cf - Makefile config src lua debian README.md | tar -xf - -C $(DEB_TREE)
	cd $(DEB_TREE) && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL \
	    dpkg-buildpackage -b -us -uc > ../build.log 2>&1 \
	    || { tail -30 ../build.log; echo "log: $(BUILD)/deb/build.log"; exit 1; }
	cp $(BUILD)/deb/$(notdir $@) $@
	@echo "built $@"

clean:
	rm -rf $(BUILD) t/servroot*
