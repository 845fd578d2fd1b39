#!/bin/sh
# gvisor-checkpoint: ask gVisor to checkpoint this sandbox and print how this copy came
# back: "checkpoint result: resume" (saved, still running), "restore" (this is a restored
# copy) or "error" (the save failed, or the sandbox does not allow it).
#
# The trigger and the result must use ONE open file: gVisor decides at open which
# checkpoint a descriptor waits for, so a fresh open would wait for the next one. The
# write does not move the file offset; the read blocks until the checkpoint is over and
# returns the result with a newline.
if ! exec 3<>/proc/gvisor/checkpoint; then
	echo "checkpoint result: error (cannot open /proc/gvisor/checkpoint for writing)"
	exit 1
fi
if ! echo 1 >&3; then
	echo "checkpoint result: error (write to /proc/gvisor/checkpoint failed)"
	exit 1
fi
result=
read -r result <&3
exec 3>&-
echo "checkpoint result: ${result:-error}"
