#!/bin/sh
# redis-snapshot [KEYS]: start redis-server, fill it with KEYS keys (default 1000000,
# DEBUG POPULATE: key:N holds value:N), print "ready N keys", checkpoint the sandbox
# (gvisor-checkpoint prints the result), then keep redis running.
keys=${1:-1000000}
redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no \
	--enable-debug-command yes --protected-mode no --loglevel warning &
redis=$!
until [ "$(redis-cli ping 2>/dev/null)" = PONG ]; do
	kill -0 "$redis" 2>/dev/null || { echo "redis-server exited"; exit 1; }
	sleep 0.05
done
redis-cli DEBUG POPULATE "$keys" >/dev/null
echo "ready $(redis-cli DBSIZE) keys"
gvisor-checkpoint
wait "$redis"
