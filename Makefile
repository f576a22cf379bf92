.PHONY: demo test lint bench clean

demo:  ## run the server with demo data on http://127.0.0.1:8000/
	scripts/demo.sh

test:  ## install, lint, type-check and run every test
	scripts/test.sh

lint:
	scripts/bootstrap.sh test
	.venv/bin/ruff check server tests bench
	.venv/bin/ruff format --check server tests bench
	.venv/bin/mypy server
	.venv/bin/mypy --strict server/core
	.venv/bin/lint-imports

bench:  ## run every benchmark; results in docs/benchmarks.md and bench/results/
	scripts/bootstrap.sh test
	for b in bench/tray.py bench/post.py bench/upload_memory.py bench/capture.py bench/fanout.py bench/seen.py bench/push_instructions.py bench/scaleout.py; do .venv/bin/python $$b || exit 1; done

clean:
	rm -rf .venv var .pytest_cache .mypy_cache .ruff_cache
