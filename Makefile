# The two commands the README promises work on a fresh machine.
.PHONY: run test setup build bench

CONFIG ?= conf/app.ini

run:
	./scripts/setup.sh
	cargo build --release
	./target/release/wspush -c $(CONFIG)

test:
	WSPUSH_SETUP_TEST=1 ./scripts/setup.sh
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo test --all-targets
	./scripts/js-test.sh
	./scripts/docker-test.sh

build:
	./scripts/setup.sh
	cargo build --release

bench:
	cargo bench
