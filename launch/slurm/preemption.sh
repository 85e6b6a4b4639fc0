# The preemption contract of megallm's SLURM jobs, sourced by pretrain.sbatch and by the sweep's
# generated sweep.sbatch (megallm/sweep/execute.py):
#
#   run_preemptible srun [options] COMMAND [arguments]
#
# starts the job step in the background and waits for it. SIGUSR1 or SIGTERM sent to this batch shell
# (`#SBATCH --signal=B:USR1@300` before the time limit, `scancel --batch --signal=...`) is passed on to
# every process of the job's steps (`scancel --signal`); preemption and `scancel --signal=...` reach the
# steps directly. megallm's ranks then finish the step they are in, save a checkpoint and exit 75
# (EX_TEMPFAIL), and so does the job step: torchrun under `python -m megallm.parallel.torchrun`, and
# launch/sweep.py, pass that exit code on. Exit code 75 requeues the job (`scontrol requeue`, which
# ends this attempt; the job pends and starts again, resuming from the checkpoint with
# train.resume=auto). Any other exit code ends the job with it, not requeued.

PREEMPTED_EXIT_CODE=75  # megallm.train.callbacks.PREEMPTED_EXIT_CODE

_pass_on() {
    echo "$1: asking the ranks of job $SLURM_JOB_ID to checkpoint and stop"
    scancel --signal="$1" "$SLURM_JOB_ID"   # to the job's steps (this shell is the batch step)
}

run_preemptible() {
    trap '_pass_on USR1' USR1
    trap '_pass_on TERM' TERM
    "$@" &
    local step=$! rc
    wait "$step" || true                                               # a trap cuts a wait short (exit > 128)
    while kill -0 "$step" 2>/dev/null; do wait "$step" || true; done   # the step still runs: wait on
    wait "$step" && rc=0 || rc=$?                                      # its exit code (bash keeps it)
    trap - USR1 TERM
    if [[ $rc -eq $PREEMPTED_EXIT_CODE ]]; then
        echo "job $SLURM_JOB_ID stopped with a checkpoint (exit $rc): requeueing"
        # ends this attempt (the script stops here); where requeueing is refused, the job ends with 75
        scontrol requeue "$SLURM_JOB_ID" || echo "job $SLURM_JOB_ID: cannot requeue; submit it again to resume"
    fi
    return "$rc"
}
