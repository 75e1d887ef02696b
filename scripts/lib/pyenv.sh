# Sourced by scripts/deps-python and scripts/test: the project's own virtualenv for the Python
# test tools, so they never depend on what a machine's Python happens to have installed.
PYENV=${IRSA_SECRETS_PYENV:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/pyenv}
