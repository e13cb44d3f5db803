//! Tasks (the running process of a container): start with file IO, stop with a signal and a
//! grace period, status, and exec for health checks.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::{
    CreateTaskRequest, DeleteProcessRequest, DeleteTaskRequest, ExecProcessRequest, GetRequest,
    KillRequest, ListTasksRequest, StartRequest, WaitRequest,
};
use containerd_client::types::v1::{Process, Status};
use tracing::{debug, info, warn};

use super::exec_output::ExecOutput;
use super::{container_spec, log_uri, oci, ContainerError, RuntimeConfig, ServiceLog, StopWith};
use crate::containerd::{call, Containerd, ContainerdError, CALL_TIMEOUT};

const SIGKILL: u32 = 9;
/// How long to wait for a task to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long an exec's output may still flow after it exited (a background child holding its
/// stdout is cut off after this).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// State of a task as containerd reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited.
    Stopped,
    /// Paused or pausing.
    Paused,
    /// containerd does not know.
    Unknown,
}

/// A task: its init pid, status and exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    /// Host pid of the init process.
    pub pid: u32,
    /// Status.
    pub status: TaskStatus,
    /// Exit status (valid when stopped).
    pub exit_status: u32,
    /// When it exited.
    pub exited_at: Option<SystemTime>,
    /// The kernel's OOM killer killed a process of its cgroup (read by the reconciler for
    /// stopped tasks; containerd does not say).
    pub oom_killed: bool,
}

impl From<&Process> for TaskState {
    fn from(p: &Process) -> TaskState {
        let status = match Status::try_from(p.status).unwrap_or(Status::Unknown) {
            Status::Created => TaskStatus::Created,
            Status::Running => TaskStatus::Running,
            Status::Stopped => TaskStatus::Stopped,
            Status::Paused | Status::Pausing => TaskStatus::Paused,
            Status::Unknown => TaskStatus::Unknown,
        };
        let exited_at = p.exited_at.as_ref().filter(|t| t.seconds > 0).map(|t| {
            SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos.max(0) as u32)
        });
        TaskState {
            pid: p.pid,
            status,
            exit_status: p.exit_status,
            exited_at,
            oom_killed: false,
        }
    }
}

/// The runc shim options (`containerd.runc.v1.Options`; only `root` is set).
#[derive(Clone, PartialEq, prost::Message)]
struct RuncOptions {
    #[prost(string, tag = "7")]
    root: String,
}

/// Runtime options carrying the runc root, when configured.
pub(super) fn runc_options(cfg: &RuntimeConfig) -> Option<prost_types::Any> {
    let root = cfg.runc_root.as_ref()?;
    let options = RuncOptions {
        root: root.display().to_string(),
    };
    Some(prost_types::Any {
        type_url: "containerd.runc.v1.Options".into(),
        value: prost::Message::encode_to_vec(&options),
    })
}

/// All tasks in the namespace by container id.
pub(super) async fn list_tasks(
    ctr: &Containerd,
) -> Result<HashMap<String, TaskState>, ContainerdError> {
    let resp = ctr
        .tasks()
        .list(ctr.request(ListTasksRequest {
            filter: String::new(),
        }))
        .await
        .map_err(call("tasks.list"))?;
    // containerd 1.6 fills `id` (the init process id = container id) and leaves `container_id` empty.
    let key = |p: &Process| {
        if p.container_id.is_empty() {
            p.id.clone()
        } else {
            p.container_id.clone()
        }
    };
    Ok(resp
        .into_inner()
        .tasks
        .iter()
        .map(|p| (key(p), TaskState::from(p)))
        .collect())
}

/// The task of container `id`, `None` when there is none.
///
/// # Errors
/// When the call fails for another reason than "not found".
#[tracing::instrument(skip(ctr))]
pub async fn task_state(ctr: &Containerd, id: &str) -> Result<Option<TaskState>, ContainerdError> {
    match ctr
        .tasks()
        .get(ctr.request(GetRequest {
            container_id: id.into(),
            exec_id: String::new(),
        }))
        .await
    {
        Ok(resp) => Ok(resp.into_inner().process.as_ref().map(TaskState::from)),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(call("tasks.get")(s)),
    }
}

async fn delete_task(ctr: &Containerd, id: &str) -> Result<(), ContainerdError> {
    match ctr
        .tasks()
        .delete(ctr.request(DeleteTaskRequest {
            container_id: id.into(),
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        Err(s) => Err(call("tasks.delete")(s)),
    }
}

async fn kill(
    ctr: &Containerd,
    id: &str,
    exec_id: &str,
    signal: u32,
    all: bool,
) -> Result<(), ContainerdError> {
    let req = ctr.request(KillRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
        signal,
        all,
    });
    match ctr.tasks().kill(req).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        Err(s) => Err(call("tasks.kill")(s)),
    }
}

/// Wait for a process to exit; `Ok(None)` when `timeout` passes first.
async fn wait(
    ctr: &Containerd,
    id: &str,
    exec_id: &str,
    timeout: Duration,
) -> Result<Option<u32>, ContainerdError> {
    let req = ctr.request_with(
        WaitRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
        },
        None,
        timeout + Duration::from_secs(1),
    );
    match tokio::time::timeout(timeout, ctr.tasks().wait(req)).await {
        Err(_) => Ok(None),
        Ok(Ok(resp)) => Ok(Some(resp.into_inner().exit_status)),
        Ok(Err(s))
            if matches!(
                s.code(),
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ) =>
        {
            Ok(None)
        }
        Ok(Err(s)) if s.code() == tonic::Code::NotFound => Ok(Some(0)),
        Ok(Err(s)) => Err(call("tasks.wait")(s)),
    }
}

/// Start the task of container `id` with stdout and stderr going to `log` through the log
/// writer ([`RuntimeConfig::log_writer`], started by the shim). A stopped or
/// created-but-not-started task left from before is deleted first; a running one is kept.
/// Returns the init pid.
///
/// # Errors
/// When the task cannot be created or started (runc's message is in the error).
#[tracing::instrument(skip(ctr, cfg))]
pub async fn start_task(
    ctr: &Containerd,
    cfg: &RuntimeConfig,
    id: &str,
    log: &ServiceLog,
) -> Result<u32, ContainerError> {
    if let Some(task) = task_state(ctr, id).await? {
        if task.status == TaskStatus::Running {
            return Ok(task.pid);
        }
        delete_task(ctr, id).await?;
    }
    if let Some(dir) = log.path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ContainerError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let rootfs = match ctr.snapshot_mounts(id).await {
        Ok(m) => m,
        Err(e) if e.is_not_found() => {
            // An interrupted create: the record exists without its snapshot.
            return Err(ContainerError::BadRecord {
                id: id.into(),
                reason: "its snapshot is missing".into(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let io = log_uri(&cfg.log_writer, log);
    let req = ctr.request(CreateTaskRequest {
        container_id: id.into(),
        rootfs,
        stdout: io.clone(),
        stderr: io,
        options: runc_options(cfg),
        ..Default::default()
    });
    ctr.tasks()
        .create(req)
        .await
        .map_err(call("tasks.create"))?;
    let started = ctr
        .tasks()
        .start(ctr.request(StartRequest {
            container_id: id.into(),
            exec_id: String::new(),
        }))
        .await;
    match started {
        Ok(resp) => {
            let pid = resp.into_inner().pid;
            info!(%id, pid, "task started");
            Ok(pid)
        }
        Err(s) => {
            let _ = delete_task(ctr, id).await;
            Err(call("tasks.start")(s).into())
        }
    }
}

/// Stop the task of container `id`: `how.signal` to its init process, SIGKILL to every process
/// after `how.grace`, then delete the task. Returns the state before stopping (`None` when there
/// was no task).
///
/// # Errors
/// When a containerd call fails.
#[tracing::instrument(skip(ctr))]
pub(super) async fn stop_task_with(
    ctr: &Containerd,
    id: &str,
    how: StopWith,
) -> Result<Option<TaskState>, ContainerError> {
    let Some(state) = task_state(ctr, id).await? else {
        return Ok(None);
    };
    if state.status != TaskStatus::Stopped {
        kill(ctr, id, "", how.signal, false).await?;
        if wait(ctr, id, "", how.grace).await?.is_none() {
            warn!(%id, signal = how.signal, grace = ?how.grace, "task ignored its stop signal; killing it");
            kill(ctr, id, "", SIGKILL, true).await?;
            if wait(ctr, id, "", KILL_WAIT).await?.is_none() {
                warn!(%id, "task still running after SIGKILL");
            }
        }
    }
    delete_task(ctr, id).await?;
    debug!(%id, "task deleted");
    Ok(Some(state))
}

/// Run `argv` inside running container `id` (same env, user and cwd as its process) and return
/// its exit status. Its stdout and stderr are appended to `output` (or discarded).
///
/// # Errors
/// [`ContainerError::ExecTimeout`] when it runs longer than `timeout` (it is killed); containerd
/// errors when it cannot be started (e.g. the program does not exist).
#[tracing::instrument(skip(ctr))]
pub async fn exec(
    ctr: &Containerd,
    id: &str,
    argv: Vec<String>,
    timeout: Duration,
    output: Option<&Path>,
) -> Result<u32, ContainerError> {
    let spec = container_spec(ctr, id).await?;
    let process = oci::exec_process(&spec, argv);
    let value = serde_json::to_vec(&process).map_err(|e| ContainerError::Spec {
        reason: e.to_string(),
    })?;
    let exec_id = format!("exec-{:08x}", rand::random::<u32>());
    // Output through FIFOs read to their end (see exec_output); without `output`, /dev/null:
    // closed stdio would make programs that print fail.
    let capture = output
        .map(|path| ExecOutput::create(path, &exec_id))
        .transpose()?;
    let (stdout, stderr) = match &capture {
        Some(c) => (c.stdout(), c.stderr()),
        None => ("file:///dev/null".to_owned(), "file:///dev/null".to_owned()),
    };
    let req = ctr.request(ExecProcessRequest {
        container_id: id.into(),
        exec_id: exec_id.clone(),
        stdout,
        stderr,
        spec: Some(prost_types::Any {
            type_url: PROCESS_TYPE_URL.into(),
            value,
        }),
        ..Default::default()
    });
    if let Err(e) = ctr.tasks().exec(req).await.map_err(call("tasks.exec")) {
        if let Some(capture) = capture {
            capture.finish(Duration::ZERO).await;
        }
        return Err(e.into());
    }
    let result = async {
        ctr.tasks()
            .start(ctr.request(StartRequest {
                container_id: id.into(),
                exec_id: exec_id.clone(),
            }))
            .await
            .map_err(call("tasks.start"))?;
        match wait(ctr, id, &exec_id, timeout).await? {
            Some(status) => Ok(status),
            None => {
                kill(ctr, id, &exec_id, SIGKILL, false).await?;
                let _ = wait(ctr, id, &exec_id, KILL_WAIT.min(CALL_TIMEOUT)).await;
                Err(ContainerError::ExecTimeout {
                    id: id.into(),
                    timeout,
                })
            }
        }
    }
    .await;
    // All output is in once the shim has closed both FIFOs; only then delete the process.
    if let Some(capture) = capture {
        capture.finish(OUTPUT_DRAIN).await;
    }
    let del = ctr.request(DeleteProcessRequest {
        container_id: id.into(),
        exec_id: exec_id.clone(),
    });
    if let Err(s) = ctr.tasks().delete_process(del).await {
        if s.code() != tonic::Code::NotFound {
            debug!(%id, %exec_id, status = %s.message(), "cannot delete exec process");
        }
    }
    result
}
