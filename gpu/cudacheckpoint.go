package gpu

import (
	"fmt"
	"os/exec"
)

// CudaCheckpointBinary is the name of NVIDIA's cuda-checkpoint utility, which suspends a
// process's CUDA state into host memory before a checkpoint and resumes it after.
const CudaCheckpointBinary = "cuda-checkpoint"

// FindCudaCheckpoint returns the absolute path of cuda-checkpoint found by lookPath (nil:
// exec.LookPath, i.e. $PATH), or an error wrapping exec.ErrNotFound when it is absent.
// Only detection lives here; invoking it is the checkpoint pipeline's job.
func FindCudaCheckpoint(lookPath func(string) (string, error)) (string, error) {
	if lookPath == nil {
		lookPath = exec.LookPath
	}
	p, err := lookPath(CudaCheckpointBinary)
	if err != nil {
		return "", fmt.Errorf("gpu: %s: %w", CudaCheckpointBinary, err)
	}
	return p, nil
}
