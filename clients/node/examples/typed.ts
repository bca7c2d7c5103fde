// The same in TypeScript: type-checked by `npm run typecheck` (the package's declarations).
import { FeederClient, Fail, InvalidArgument, Worker, type Task, type TaskInfo } from "@feedwork/client";

interface Email {
  to: string;
  subject: string;
}

async function send(email: Email, signal: AbortSignal): Promise<string> {
  if (signal.aborted) throw new Error("lease lost");
  return `sent to ${email.to}`;
}

export async function produce(client: FeederClient): Promise<string[]> {
  try {
    const results = await client.submitMany([
      { queue: "emails", payload: JSON.stringify({ to: "ada@example.com", subject: "hi" }) },
      { queue: "emails", payload: JSON.stringify({ to: "bob@example.com", subject: "yo" }), delay: 60, maxAttempts: 3 },
    ]);
    return results.map((r) => r.taskId);
  } catch (error) {
    if (error instanceof InvalidArgument) console.error(error.fieldViolations.map((v) => v.field));
    throw error;
  }
}

export function work(): Worker {
  return new Worker({
    target: "127.0.0.1:50051,127.0.0.1:50052",
    queue: "emails",
    concurrency: 16,
    leaseDuration: 30,
    tlsCa: "certs/ca.pem",
    tlsServerName: "feeder",
    apiKeyFile: "certs/worker.key",
    handler: async (task: Task) => {
      const email = task.json<Email>();
      if (!email.to.includes("@")) throw new Fail(`bad address ${email.to}`);
      return send(email, task.signal);
    },
  });
}

export async function result(client: FeederClient, id: string): Promise<TaskInfo> {
  return client.wait(id, { timeout: 10 });
}
