# Developer shortcuts and the install. The README's two commands are scripts/demo and scripts/test.
#
#   make release                     the release build as installed (scripts/build): .build/dist/
#   make install [PREFIX=/usr/local] [DESTDIR=]
#                                    the binary, bash/zsh/fish completions and one man page per command
#   make uninstall [PREFIX=…] [DESTDIR=]
#   make deb                         nimbus_<version>-1_<arch>.deb here (scripts/package-deb)
.PHONY: build release install uninstall deb test lint format

PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
BASH_COMPLETION_DIR ?= $(DATADIR)/bash-completion/completions
# Debian's zsh reads packaged completions from vendor-completions and local ones from site-functions.
ZSH_COMPLETION_DIR ?= $(if $(filter /usr,$(PREFIX)),$(DATADIR)/zsh/vendor-completions,$(DATADIR)/zsh/site-functions)
FISH_COMPLETION_DIR ?= $(DATADIR)/fish/vendor_completions.d
# scripts/build's output: .build/dist, or NIMBUS_BUILD_PATH/dist.
DIST = $(or $(NIMBUS_BUILD_PATH),.build)/dist

build:
	swift build

# Every install goes through this one build, so what is installed is what bench/ measures.
release:
	scripts/build >/dev/null

install: release
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(BASH_COMPLETION_DIR) $(DESTDIR)$(ZSH_COMPLETION_DIR) \
		$(DESTDIR)$(FISH_COMPLETION_DIR) $(DESTDIR)$(MANDIR)/man1
	install -m 755 $(DIST)/bin/nimbus $(DESTDIR)$(BINDIR)/nimbus
	install -m 644 $(DIST)/completions/nimbus.bash $(DESTDIR)$(BASH_COMPLETION_DIR)/nimbus
	install -m 644 $(DIST)/completions/_nimbus $(DESTDIR)$(ZSH_COMPLETION_DIR)/_nimbus
	install -m 644 $(DIST)/completions/nimbus.fish $(DESTDIR)$(FISH_COMPLETION_DIR)/nimbus.fish
	install -m 644 $(DIST)/man/man1/*.1.gz $(DESTDIR)$(MANDIR)/man1/

# The man pages are named nimbus.1 and nimbus-COMMAND[-SUBCOMMAND].1, so the pattern takes every one an
# earlier version installed, including those of commands since removed.
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/nimbus $(DESTDIR)$(BASH_COMPLETION_DIR)/nimbus \
		$(DESTDIR)$(ZSH_COMPLETION_DIR)/_nimbus $(DESTDIR)$(FISH_COMPLETION_DIR)/nimbus.fish \
		$(DESTDIR)$(MANDIR)/man1/nimbus.1.gz $(DESTDIR)$(MANDIR)/man1/nimbus-*.1.gz

deb:
	scripts/package-deb >/dev/null

test:
	scripts/test

# Checks formatting against .swift-format; fails on any finding.
lint:
	swift-format lint --strict --configuration .swift-format --recursive Sources Tests Fuzz/Sources Fuzz/Package.swift

format:
	swift-format format --in-place --configuration .swift-format --recursive Sources Tests Fuzz/Sources Fuzz/Package.swift
