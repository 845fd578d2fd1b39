package testenv

// GuideCounterScript is the Python counter of the GKE Pod snapshot guide's pod, as the
// guide writes it (python3 -c): it counts once a second and at 20 writes 1 to
// /proc/gvisor/checkpoint and reads the result from the same open file, printing
// "GKE Pod Snapshot: resume" in the pod that was saved and "GKE Pod Snapshot: restore"
// in a copy restored from the snapshot, which then counts on from 21. The e2e tests and
// hack/demo-kubernetes run it unchanged.
const GuideCounterScript = `import time
def trigger_snapshot():
  with open("/proc/gvisor/checkpoint", "r+") as f:
    f.write("1")
    res = f.read().rstrip()
    print(f"GKE Pod Snapshot: {res}")
i = 0
while True:
  print(f"Count: {i}", flush=True)
  if (i == 20): #simulate the application being ready to snapshot at 20th count
    trigger_snapshot()
  i += 1
  time.sleep(1)
`
