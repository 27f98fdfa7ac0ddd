# autoexp experiment previous: what each run does. Sourced by the array script with
# AUTOEXP_RUN_INDEX set; defines the run's name, directory, environment, setup and command.
case "$AUTOEXP_RUN_INDEX" in
0)
  AUTOEXP_RUN_NAME=ok
  AUTOEXP_RUN_DIR=@EXP_DIR@/runs/ok
  autoexp_env() {
    :
  }
  autoexp_setup() {
    :
  }
  autoexp_command() {
    bash -c 'echo loss: 0.5; exit 0'
  }
  ;;
1)
  AUTOEXP_RUN_NAME=bad
  AUTOEXP_RUN_DIR=@EXP_DIR@/runs/bad
  autoexp_env() {
    :
  }
  autoexp_setup() {
    :
  }
  autoexp_command() {
    bash -c 'echo loss: 2.5; exit 3'
  }
  ;;
2)
  AUTOEXP_RUN_NAME=long
  AUTOEXP_RUN_DIR=@EXP_DIR@/runs/long
  autoexp_env() {
    :
  }
  autoexp_setup() {
    :
  }
  autoexp_command() {
    bash -c 'echo step 1; sleep 300'
  }
  ;;
*)
  echo "autoexp: no run has index $AUTOEXP_RUN_INDEX in $AUTOEXP_EXP_DIR/tasks.sh" >&2
  exit 2
  ;;
esac
