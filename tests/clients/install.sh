# Sourced by tests/clients/run.sh: installs the clients that are missing, once, and sets
#   PYTHON        python of a virtualenv holding psycopg 3, psycopg2 and asyncpg
#   NODE_PATH     node_modules holding node-postgres
#   JDBC_JAR      PostgreSQL JDBC (Debian's libpostgresql-jdbc-java)
#   RUST_CLIENTS  directory of the sqlx_client and tokio_postgres_client binaries
#
# Python and node packages go to $SHARDLINE_CLIENTS_CACHE (default /var/tmp/shardline-clients),
# outside the repository, and are reinstalled only when their pinned versions change (a stamp
# holds the hash of the requirements / lockfile). Debian packages are installed when absent,
# which needs root (as in CI); otherwise the script says what to install.

CACHE=${SHARDLINE_CLIENTS_CACHE:-/var/tmp/shardline-clients}
mkdir -p "$CACHE"

# Debian packages: ruby-pg, the JDBC driver, and a JDK (java runs the client from source).
need_apt=()
dpkg -s ruby-pg >/dev/null 2>&1 || need_apt+=(ruby-pg)
[ -f /usr/share/java/postgresql.jar ] || need_apt+=(libpostgresql-jdbc-java)
command -v javac >/dev/null 2>&1 || need_apt+=(openjdk-17-jdk-headless)
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "tests/clients: missing Debian packages, install them as root: apt-get install ${need_apt[*]}" >&2
    exit 1
  fi
  echo "installing Debian packages: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
JDBC_JAR=/usr/share/java/postgresql.jar

# up_to_date STAMP FILE: whether STAMP holds FILE's hash (then nothing needs installing).
up_to_date() { [ -f "$1" ] && [ "$(cat "$1")" = "$(sha256sum <"$2")" ]; }

# Python drivers in a virtualenv, pinned by tests/clients/python/requirements.txt.
REQUIREMENTS=$PWD/tests/clients/python/requirements.txt
if ! up_to_date "$CACHE/venv/.stamp" "$REQUIREMENTS"; then
  echo "installing Python drivers into $CACHE/venv"
  rm -rf "$CACHE/venv"
  python3 -m venv "$CACHE/venv"
  "$CACHE/venv/bin/pip" install -q --disable-pip-version-check -r "$REQUIREMENTS"
  sha256sum <"$REQUIREMENTS" >"$CACHE/venv/.stamp"
fi
PYTHON=$CACHE/venv/bin/python

# node-postgres, pinned by tests/clients/node/package-lock.json.
LOCK=$PWD/tests/clients/node/package-lock.json
if ! up_to_date "$CACHE/node/.stamp" "$LOCK"; then
  echo "installing node-postgres into $CACHE/node"
  rm -rf "$CACHE/node"
  mkdir -p "$CACHE/node"
  cp tests/clients/node/package.json "$LOCK" "$CACHE/node/"
  (cd "$CACHE/node" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  sha256sum <"$LOCK" >"$CACHE/node/.stamp"
fi
export NODE_PATH=$CACHE/node/node_modules

# sqlx and tokio-postgres: a separate cargo project with its own lockfile, built into the
# workspace's target directory (cargo rebuilds only what changed).
RUST_TARGET=${CARGO_TARGET_DIR:-$PWD/target}
echo "building the Rust clients (sqlx, tokio-postgres)"
CARGO_TARGET_DIR=$RUST_TARGET cargo build --quiet --locked --bins \
  --manifest-path tests/clients/rust/Cargo.toml
RUST_CLIENTS=$RUST_TARGET/debug
