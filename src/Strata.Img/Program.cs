using Strata.Img.Cli;
using Strata.Img.Commands;

// strata-img: qemu-img 7.2 compatible command line. This file only wires sub-commands.
return await Strata.Img.Entry.MainAsync(args);

namespace Strata.Img
{
    internal static class Entry
    {
        private static readonly Dictionary<string, Func<string[], Task<int>>> Commands = new(StringComparer.Ordinal)
        {
            ["create"] = CreateCommand.RunAsync,
            ["info"] = InfoCommand.RunAsync,
            ["check"] = CheckCommand.RunAsync,
            ["map"] = MapCommand.RunAsync,
            ["measure"] = MeasureCommand.RunAsync,
            ["compare"] = CompareCommand.RunAsync,
            ["convert"] = ConvertCommand.RunAsync,
            ["resize"] = ResizeCommand.RunAsync,
            ["bench"] = BenchCommand.RunAsync,
            ["snapshot"] = SnapshotCommand.RunAsync,
            ["rebase"] = RebaseCommand.RunAsync,
            ["commit"] = CommitCommand.RunAsync,
            ["amend"] = AmendCommand.RunAsync,
            ["bitmap"] = BitmapCommand.RunAsync,
        };

        private static readonly LongOption[] TopLongs =
        [
            new("help", ArgKind.None, 'h'),
            new("version", ArgKind.None, 'V'),
            new("trace", ArgKind.Required, 'T'),
        ];

        public static async Task<int> MainAsync(string[] args)
        {
            int rc;
            try
            {
                rc = await DispatchAsync(args);
            }
            catch (ExitException e)
            {
                rc = e.Code;
            }
            Io.Flush();
            return rc;
        }

        private static async Task<int> DispatchAsync(string[] args)
        {
            if (args.Length < 1)
                throw Io.ErrorExit("Not enough arguments");
            var (opts, pos) = GetOpt.Parse(args, "+:hVT:", TopLongs, stopAtFirstPositional: true);
            foreach (var o in opts)
            {
                switch (o.Id)
                {
                    case 'h':
                        return Help.Show();
                    case 'V':
                        Io.Out.Write(Help.Version);
                        return 0;
                }
            }
            if (pos.Count < 1)
                return 0;
            string cmd = pos[0];
            if (!Commands.TryGetValue(cmd, out var run))
                throw Io.ErrorExit($"Command not found: {cmd}");
            return await run([.. pos.Skip(1)]);
        }
    }
}
