# Global API rate limiter for nginx: build, run, test, benchmark.
#
#   make          build the module (build/ngx_http_ratelimit_module.so)
#   make run      start two Redis shards and nginx with the demo config
#   make test     run every suite (unit, Redis scripts, nginx)
#   make bench    benchmark against plain nginx and limit_req
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

.PHONY: all module unit deps run test test-valgrind bench clean

all: module unit

module: $(MODULE)

deps:
	@sh scripts/deps.sh

$(NGX_BUILD)/objs/Makefile: config $(NGINX_SRC)/conf_flags
	rm -rf $(NGX_BUILD)
	mkdir -p $(BUILD)
	cp -r $(NGINX_SRC) $(NGX_BUILD)
	cd $(NGX_BUILD) && bash -c '. ./conf_flags && ./configure \
	    "$${NGX_CONF_FLAGS[@]}" --with-cc-opt="$(CC_OPT)" \
	    --with-ld-opt="$(LD_OPT)" --add-dynamic-module=$(CURDIR)' \
	    > configure.log || { tail -20 configure.log; exit 1; }

$(MODULE): $(NGX_BUILD)/objs/Makefile $(SOURCES) $(SCRIPTS) lua/embed.sh
	sh lua/embed.sh $(NGX_BUILD)/objs/ngx_http_ratelimit_scripts.h $(SCRIPTS)
	$(MAKE) -s -C $(NGX_BUILD) -f objs/Makefile modules
	cp $(NGX_BUILD)/objs/ngx_http_ratelimit_module.so $@

unit:
	@sh t/unit/build.sh

run: deps all
	sh scripts/run-demo.sh

test: deps all
	sh scripts/run-tests.sh

test-valgrind: deps all
	@sh scripts/deps.sh --valgrind
	sh scripts/run-valgrind.sh

bench: all
	@sh scripts/deps.sh --bench
	sh bench/run.sh

clean:
	rm -rf $(BUILD) t/servroot*
