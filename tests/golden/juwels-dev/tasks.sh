# autoexp experiment golden: what each run does. Sourced by the array script with
# AUTOEXP_RUN_INDEX set; defines the run's name, directory, environment, setup and command.
case "$AUTOEXP_RUN_INDEX" in
0)
  AUTOEXP_RUN_NAME=lr0.0001_tagtwo-words
  AUTOEXP_RUN_DIR='/scratch/it'"'"'s a $dir (1)/exp/golden/runs/lr0.0001_tagtwo-words'
  autoexp_env() {
    :
    export HF_HUB_OFFLINE="1"
    export TRANSFORMERS_OFFLINE="1"
    export HF_DATASETS_OFFLINE="1"
    export CUDA_VISIBLE_DEVICES="0,1,2,3"
    export NCCL_SOCKET_IFNAME="ib0"
    export GLOO_SOCKET_IFNAME="ib0"
    export HF_HOME="/scratch/hf cache/lr0.0001_tagtwo-words"
  }
  autoexp_setup() {
    :
    if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"; fi
    echo setting up lr0.0001_tagtwo-words
  }
  autoexp_command() {
    python train.py --lr 0.0001 --tag 'two words' --out '/scratch/it'"'"'s a $dir (1)/exp/golden/runs/lr0.0001_tagtwo-words'
  }
  ;;
1)
  AUTOEXP_RUN_NAME=lr0.0003_tagit-s-HOME-id-
  AUTOEXP_RUN_DIR='/scratch/it'"'"'s a $dir (1)/exp/golden/runs/lr0.0003_tagit-s-HOME-id-'
  autoexp_env() {
    :
    export HF_HUB_OFFLINE="1"
    export TRANSFORMERS_OFFLINE="1"
    export HF_DATASETS_OFFLINE="1"
    export CUDA_VISIBLE_DEVICES="0,1,2,3"
    export NCCL_SOCKET_IFNAME="ib0"
    export GLOO_SOCKET_IFNAME="ib0"
    export HF_HOME="/scratch/hf cache/lr0.0003_tagit-s-HOME-id-"
  }
  autoexp_setup() {
    :
    if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"; fi
    echo setting up lr0.0003_tagit-s-HOME-id-
  }
  autoexp_command() {
    python train.py --lr 0.0003 --tag 'it'"'"'s $HOME `id`' --out '/scratch/it'"'"'s a $dir (1)/exp/golden/runs/lr0.0003_tagit-s-HOME-id-'
  }
  ;;
*)
  echo "autoexp: no run has index $AUTOEXP_RUN_INDEX in $AUTOEXP_EXP_DIR/tasks.sh" >&2
  exit 2
  ;;
esac
