#!/bin/sh
# nginx-snapshot: start nginx (master and workers, /etc/nginx/nginx.conf), wait until it
# serves its page, print "ready", checkpoint the sandbox (gvisor-checkpoint prints the
# result), then keep nginx running.
nginx -c /etc/nginx/nginx.conf &
master=$!
until wget -qO- http://127.0.0.1/ >/dev/null 2>&1; do
	kill -0 "$master" 2>/dev/null || { echo "nginx exited"; exit 1; }
	sleep 0.05
done
echo "ready $(wget -qO- http://127.0.0.1/ | head -n 1)"
gvisor-checkpoint
wait "$master"
