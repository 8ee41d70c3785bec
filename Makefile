# Developer shortcuts. The README's two commands are scripts/demo and scripts/test.
.PHONY: build test lint format

build:
	swift build

test:
	scripts/test

# Checks formatting against .swift-format; fails on any finding.
lint:
	swift-format lint --strict --configuration .swift-format --recursive Sources Tests

format:
	swift-format format --in-place --configuration .swift-format --recursive Sources Tests
